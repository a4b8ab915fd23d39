"""Per-sequence block tables over the block pool; the scheduler's only view of the KV cache."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.kv_cache.block_pool import Block, BlockHash, BlockPool, hash_block_tokens
from engine.sequence import Sequence


@dataclass(frozen=True)
class KVCacheBlocks:
    """An opaque handle on blocks; the scheduler passes it back, never looks inside."""

    blocks: tuple[Block, ...] = ()

    def __len__(self) -> int:
        return len(self.blocks)


@dataclass
class PrefixCacheStats:
    """Counters in tokens, as vLLM reports them: queried prompt tokens and hits."""

    queries: int = 0
    hits: int = 0
    requests: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


@dataclass
class _SeqBlocks:
    blocks: list[Block] = field(default_factory=list)
    hashes: list[BlockHash] = field(default_factory=list)  # of the full blocks, in order


class KVCacheManager:
    """Allocates, shares and frees the blocks of each sequence."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        self.block_size = block_size
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        self.enable_prefix_caching = enable_prefix_caching
        self.stats = PrefixCacheStats()
        self._seqs: dict[int, _SeqBlocks] = {}

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        return self.pool.usage

    def get_computed_blocks(self, seq: Sequence) -> tuple[KVCacheBlocks, int]:
        """Longest cached prefix of the sequence's tokens, in whole blocks.

        The last token is never taken from the cache: the step must compute it
        to produce logits.
        """
        if not self.enable_prefix_caching:
            return KVCacheBlocks(), 0
        bs = self.block_size
        tokens = seq.all_token_ids
        max_blocks = (len(tokens) - 1) // bs
        hits: list[Block] = []
        parent: BlockHash | None = None
        for i in range(max_blocks):
            chunk = tokens[i * bs : (i + 1) * bs]
            parent = hash_block_tokens(parent, chunk)
            block = self.pool.lookup(parent, chunk)
            if block is None:
                break
            hits.append(block)
        self.stats.requests += 1
        self.stats.queries += len(tokens)
        self.stats.hits += len(hits) * bs
        return KVCacheBlocks(tuple(hits)), len(hits) * bs

    def allocate_slots(
        self,
        seq: Sequence,
        num_new_tokens: int,
        computed: KVCacheBlocks | None = None,
    ) -> KVCacheBlocks | None:
        """Make room for ``num_new_tokens`` more tokens; None when the pool is too full.

        ``computed`` are prefix-cache hits from get_computed_blocks for a
        sequence being admitted. Full blocks are published to the prefix cache
        now: their KV is written by the step this allocation is for.
        """
        state = self._seqs.setdefault(seq.seq_id, _SeqBlocks())
        hits = computed.blocks if computed else ()
        num_computed = seq.num_computed_tokens + len(hits) * self.block_size
        total = num_computed + num_new_tokens
        need = -(-total // self.block_size) - len(state.blocks) - len(hits)
        # Hits idling in the free queue stop being free once touched.
        idle_hits = sum(1 for b in hits if b.ref_count == 0)
        if need > self.pool.num_free_blocks - idle_hits:
            if not state.blocks:
                del self._seqs[seq.seq_id]
            return None
        self.pool.touch(hits)
        state.blocks.extend(hits)
        state.hashes.extend(b.block_hash for b in hits if b.block_hash is not None)
        new_blocks = self.pool.allocate(max(need, 0))
        state.blocks.extend(new_blocks)
        # Slots past the sequence's own tokens hold guesses (speculative decoding): a block
        # is published only once real tokens fill it.
        self._publish_full_blocks(seq, state, min(total, seq.num_tokens))
        return KVCacheBlocks(tuple(new_blocks))

    def trim(self, seq: Sequence, num_tokens: int) -> None:
        """Hand back the blocks past the first ``num_tokens`` tokens (the slots of rejected
        guesses); they were never published, so they go straight back to the pool."""
        state = self._seqs.get(seq.seq_id)
        if state is None:
            return
        keep = -(-num_tokens // self.block_size)
        if len(state.blocks) > keep:
            extra = state.blocks[keep:]
            del state.blocks[keep:]
            self.pool.free(reversed(extra))

    def _publish_full_blocks(self, seq: Sequence, state: _SeqBlocks, num_tokens: int) -> None:
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        tokens = seq.all_token_ids
        for i in range(len(state.hashes), num_tokens // bs):
            chunk = tokens[i * bs : (i + 1) * bs]
            parent = state.hashes[-1] if state.hashes else None
            h = hash_block_tokens(parent, chunk)
            state.hashes.append(h)
            self.pool.cache(state.blocks[i], h, chunk)

    def block_ids(self, seq_id: int) -> list[int]:
        """The sequence's block table: block ids in token order."""
        state = self._seqs.get(seq_id)
        return [b.block_id for b in state.blocks] if state else []

    def free(self, seq: Sequence) -> None:
        """Return every block of the sequence to the pool, tail first."""
        state = self._seqs.pop(seq.seq_id, None)
        if state is not None:
            self.pool.free(reversed(state.blocks))

    def reset_prefix_cache(self) -> None:
        self.pool.reset_prefix_cache()

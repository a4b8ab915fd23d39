"""Fixed-size KV blocks with ref counts, a free queue in eviction order and a prefix cache."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

BlockHash = int


def hash_block_tokens(parent: BlockHash | None, token_ids: Sequence[int]) -> BlockHash:
    """Chained hash of one full block: equal only when every earlier block is equal too."""
    return hash((parent, tuple(token_ids)))


@dataclass
class Block:
    """One block of ``block_size`` token slots in every layer's KV pool."""

    block_id: int
    ref_count: int = 0
    block_hash: BlockHash | None = None
    # The tokens the hash was taken over, kept to rule out hash collisions on a hit.
    token_ids: tuple[int, ...] | None = None


class BlockPool:
    """Owns every block. Free blocks wait in a queue whose head is evicted first.

    A freed block keeps its hash and KV, so a later request with the same prefix
    can take it back from the queue (a prefix-cache hit) until it is evicted.
    """

    def __init__(self, num_blocks: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError("the KV pool needs at least one block")
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self._cached: dict[BlockHash, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live sequences."""
        return 1.0 - len(self._free) / self.num_blocks

    def free_block_ids(self) -> list[int]:
        """Free blocks in eviction order, head first (for tests and introspection)."""
        return list(self._free)

    def allocate(self, n: int) -> list[Block]:
        """Take n blocks from the head of the free queue, evicting their cached KV."""
        if n > len(self._free):
            raise RuntimeError(f"asked for {n} blocks, {len(self._free)} free")
        out = []
        for _ in range(n):
            block_id, _ = self._free.popitem(last=False)
            block = self.blocks[block_id]
            self._evict(block)
            block.ref_count = 1
            out.append(block)
        return out

    def touch(self, blocks: Iterable[Block]) -> None:
        """Take a reference on cache-hit blocks, pulling idle ones out of the free queue."""
        for block in blocks:
            if block.ref_count == 0:
                del self._free[block.block_id]
            block.ref_count += 1

    def free(self, blocks: Iterable[Block]) -> None:
        """Drop one reference each; blocks reaching zero join the tail of the free queue.

        Callers pass a sequence's blocks last-first, so a prefix's tail is
        evicted before its head (the head is the part most likely shared).
        """
        for block in blocks:
            block.ref_count -= 1
            if block.ref_count < 0:
                raise RuntimeError(f"block {block.block_id} freed twice")
            if block.ref_count == 0:
                self._free[block.block_id] = None

    def lookup(self, block_hash: BlockHash, token_ids: Sequence[int]) -> Block | None:
        """The cached block holding exactly these tokens after this prefix, if any."""
        block_id = self._cached.get(block_hash)
        if block_id is None:
            return None
        block = self.blocks[block_id]
        if block.token_ids != tuple(token_ids):
            return None
        return block

    def cache(self, block: Block, block_hash: BlockHash, token_ids: Sequence[int]) -> None:
        """Publish a full block under its chained hash (first writer wins)."""
        if not self.enable_prefix_caching or block.block_hash is not None:
            return
        if block_hash in self._cached:
            return
        block.block_hash = block_hash
        block.token_ids = tuple(token_ids)
        self._cached[block_hash] = block.block_id

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix (e.g. after weights change)."""
        for block in self.blocks:
            self._evict(block)

    def _evict(self, block: Block) -> None:
        if block.block_hash is not None:
            if self._cached.get(block.block_hash) == block.block_id:
                del self._cached[block.block_hash]
            block.block_hash = None
            block.token_ids = None

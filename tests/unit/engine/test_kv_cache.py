"""Block pool and KV cache manager: prefix hits, eviction order, ref counts."""

from __future__ import annotations

import pytest

from engine.kv_cache import BlockPool, KVCacheManager, hash_block_tokens
from tests.unit.engine.factories import make_seq


def test_allocate_takes_blocks_from_the_head_of_the_free_queue() -> None:
    pool = BlockPool(4)
    blocks = pool.allocate(2)
    assert [b.block_id for b in blocks] == [0, 1]
    assert pool.free_block_ids() == [2, 3]


def test_free_appends_tail_first_so_prefix_heads_are_evicted_last() -> None:
    pool = BlockPool(4)
    blocks = pool.allocate(4)
    pool.free(reversed(blocks))
    assert pool.free_block_ids() == [3, 2, 1, 0]


def test_double_free_is_refused() -> None:
    pool = BlockPool(2)
    (b,) = pool.allocate(1)
    pool.free([b])
    with pytest.raises(RuntimeError):
        pool.free([b])


def test_chained_hash_depends_on_every_earlier_block() -> None:
    a = hash_block_tokens(None, [1, 2])
    b = hash_block_tokens(hash_block_tokens(None, [9, 9]), [1, 2])
    assert a != b
    assert hash_block_tokens(None, [1, 2]) == a


def test_shared_prefix_hits_full_blocks_only_and_never_the_last_token() -> None:
    kv = KVCacheManager(num_blocks=16, block_size=4)
    prompt = list(range(1, 11))  # 10 tokens: 2 full blocks + 2
    a = make_seq(prompt=prompt)
    assert kv.allocate_slots(a, len(prompt)) is not None
    b = make_seq(prompt=prompt)
    hits, n = kv.get_computed_blocks(b)
    assert n == 8 and len(hits) == 2
    assert [blk.block_id for blk in hits.blocks] == kv.block_ids(a.seq_id)[:2]
    # A prompt of exactly two blocks keeps its last block uncached: its last token
    # must be computed to get logits.
    c = make_seq(prompt=prompt[:8])
    _, n = kv.get_computed_blocks(c)
    assert n == 4


def test_hit_blocks_are_shared_by_ref_count_not_copied() -> None:
    kv = KVCacheManager(num_blocks=16, block_size=4)
    prompt = list(range(1, 11))
    a, b = make_seq(prompt=prompt), make_seq(prompt=prompt)
    kv.allocate_slots(a, 10)
    hits, n = kv.get_computed_blocks(b)
    b.num_computed_tokens = 0
    kv.allocate_slots(b, 10 - n, hits)
    assert kv.block_ids(a.seq_id)[:2] == kv.block_ids(b.seq_id)[:2]
    assert kv.block_ids(a.seq_id)[2] != kv.block_ids(b.seq_id)[2]
    assert all(blk.ref_count == 2 for blk in hits.blocks)
    assert kv.num_free_blocks == 16 - 4


def test_freed_prefix_stays_cached_until_evicted() -> None:
    kv = KVCacheManager(num_blocks=4, block_size=4)
    prompt = list(range(1, 10))  # 3 blocks
    a = make_seq(prompt=prompt)
    kv.allocate_slots(a, 9)
    kv.free(a)
    assert kv.num_free_blocks == 4
    _, n = kv.get_computed_blocks(make_seq(prompt=prompt))
    assert n == 8
    # Filling the pool with other tokens evicts them, tail block first.
    other = make_seq(num_prompt_tokens=5)
    kv.allocate_slots(other, 5)  # takes the never-used block 3 and then block 2 (a's tail)
    _, n = kv.get_computed_blocks(make_seq(prompt=prompt))
    assert n == 8  # blocks 0 and 1 survive
    kv.allocate_slots(make_seq(num_prompt_tokens=8), 8)
    _, n = kv.get_computed_blocks(make_seq(prompt=prompt))
    assert n == 0


def test_allocation_fails_cleanly_when_the_pool_is_full() -> None:
    kv = KVCacheManager(num_blocks=2, block_size=4)
    a = make_seq(num_prompt_tokens=12)
    assert kv.allocate_slots(a, 12) is None
    assert kv.num_free_blocks == 2
    assert kv.block_ids(a.seq_id) == []


def test_prefix_cache_stats_count_queried_and_hit_tokens() -> None:
    kv = KVCacheManager(num_blocks=16, block_size=4)
    prompt = list(range(1, 11))
    kv.allocate_slots(make_seq(prompt=prompt), 10)
    kv.get_computed_blocks(make_seq(prompt=prompt))
    assert kv.stats.queries == 10 and kv.stats.hits == 8


def test_disabled_prefix_caching_never_hits() -> None:
    kv = KVCacheManager(num_blocks=16, block_size=4, enable_prefix_caching=False)
    prompt = list(range(1, 11))
    kv.allocate_slots(make_seq(prompt=prompt), 10)
    _, n = kv.get_computed_blocks(make_seq(prompt=prompt))
    assert n == 0

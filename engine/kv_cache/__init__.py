"""Paged KV cache bookkeeping: block pool, prefix cache and per-sequence block tables."""

from engine.kv_cache.block_pool import Block, BlockPool, hash_block_tokens
from engine.kv_cache.manager import KVCacheBlocks, KVCacheManager, PrefixCacheStats

__all__ = [
    "Block",
    "BlockPool",
    "KVCacheBlocks",
    "KVCacheManager",
    "PrefixCacheStats",
    "hash_block_tokens",
]

"""RagService: collections, ingest, retrieval and embeddings — what both the HTTP API and
the in-process client call. It owns the embedder (behind the dynamic batcher), the
collections on disk, the caches and the metrics; it knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from services.rag.batcher import DynamicBatcher
from services.rag.cache import ByteCache, RagCaches, build_cache
from services.rag.collection import ChunkRecord, Collection, CollectionStats
from services.rag.config import RagConfig
from services.rag.documents import Chunker, Document, validate_document
from services.rag.embedder import Embedder, build_embedder
from services.rag.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    InvalidInputError,
    RagUnavailableError,
)
from services.rag.metrics import RagMetrics
from services.rag.results import Chunk, Embeddings, Filters, IngestResult, ModelCard, Retrieval

log = logging.getLogger(__name__)

_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_TOP_K = 1000


def _check_name(name: str) -> str:
    if not _COLLECTION_NAME.match(name):
        raise InvalidInputError(
            f"collection name {name[:80]!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
            "collection",
        )
    return name


class RagService:
    """The sidecar's behaviour; ``start()`` loads the embedder and the collections on disk."""

    def __init__(
        self,
        config: RagConfig,
        embedder: Embedder | None = None,
        cache: ByteCache | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.config = config
        self.data_dir = Path(config.index.data_dir).expanduser()
        self.registry = registry or CollectorRegistry()
        self.metrics = RagMetrics(self.registry, self._all_stats, self._cache_errors)
        self._embedder = embedder
        self._cache_store = cache
        self._caches: RagCaches | None = None
        self._batcher: DynamicBatcher | None = None
        self._collections: dict[str, Collection] = {}
        self._catalog_lock = asyncio.Lock()
        self.ready = False
        self.created = 0

    # ---- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        """Compile/load the embedder and open every collection, off the event loop."""
        if self._embedder is None:
            self._embedder = await asyncio.to_thread(build_embedder, self.config.embedder)
        emb = self._embedder
        model_id = f"{emb.model_name}:{self.config.embedder.quantization}"
        if self.config.embedder.quantization == "int8":
            model_id += f":{self.config.embedder.int8_scheme}"
        self._caches = RagCaches(
            self._cache_store or build_cache(self.config.cache), self.config.cache, model_id
        )
        self._batcher = DynamicBatcher(
            emb,
            self.config.batching.max_batch_size,
            self.config.batching.max_queue_delay_ms / 1000.0,
            self._observe_batch,
        )
        self._collections = await asyncio.to_thread(self._open_collections)
        self.created = int(time.time())
        self.ready = True
        log.info("RAG service ready: %d collection(s) in %s", len(self._collections), self.data_dir)

    async def close(self) -> None:
        self.ready = False
        if self._batcher is not None:
            await self._batcher.close()
        if self._caches is not None:
            await self._caches.store.close()

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None or not self.ready:
            raise RagUnavailableError("the RAG service is loading; retry shortly")
        return self._embedder

    @property
    def model_name(self) -> str:
        return self.embedder.model_name

    def model_card(self) -> ModelCard:
        """The embedding model, when it was loaded, its input limit and vector size."""
        emb = self.embedder
        return ModelCard(emb.model_name, self.created, emb.max_seq_length, emb.dimension)

    # ---- collections -------------------------------------------------------
    async def create_collection(
        self, name: str, metadata: dict[str, Any] | None = None
    ) -> CollectionStats:
        dim = self.embedder.dimension
        _check_name(name)
        async with self._catalog_lock:
            if name in self._collections:
                raise CollectionExistsError(f"collection {name!r} already exists", "name")
            col = await asyncio.to_thread(
                Collection.create,
                self.data_dir / name,
                name,
                dim,
                self.config.index,
                metadata or {},
            )
            self._collections[name] = col
        return col.stats()

    def list_collections(self) -> list[CollectionStats]:
        self._require_ready()
        return self._all_stats()

    def collection_stats(self, name: str) -> CollectionStats:
        return self.collection(name).stats()

    async def delete_collection(self, name: str) -> None:
        """Remove the collection from disk; a commit in progress finishes first."""
        col = self.collection(name)
        async with self._catalog_lock:
            if self._collections.get(name) is not col:  # a concurrent delete won
                raise CollectionNotFoundError(f"collection {name!r} does not exist", "collection")
            del self._collections[name]
            await asyncio.to_thread(self._remove_directory, col)

    # ---- documents -----------------------------------------------------------
    async def ingest(
        self,
        collection: str,
        documents: list[Document],
        chunk_size: int | None = None,
        chunk_overlap: int | None = None,
    ) -> IngestResult:
        """Chunk, embed and durably add documents (replacing any with the same id)."""
        col = self.collection(collection)
        if not documents:
            raise InvalidInputError("no documents to ingest", "documents")
        ids = [validate_document(d).id for d in documents]
        if len(set(ids)) != len(ids):
            raise InvalidInputError("document ids repeat within the request", "documents")
        chunker = Chunker(
            self.embedder.token_offsets,
            chunk_size or self.config.chunking.chunk_size,
            self.config.chunking.chunk_overlap if chunk_overlap is None else chunk_overlap,
        )
        if chunker.chunk_size > self.embedder.max_seq_length - 2:
            raise InvalidInputError(
                f"chunk_size must be at most {self.embedder.max_seq_length - 2} tokens",
                "chunk_size",
            )
        per_doc = await asyncio.to_thread(lambda: [chunker.chunk(d) for d in documents])
        records = [
            ChunkRecord(doc.id, c.index, c.text, c.metadata)
            for doc, chunks in zip(documents, per_doc, strict=True)
            for c in chunks
        ]
        vectors = await self._embed_uncached([r.text for r in records], "ingest")
        replaced = sum(col.has_document(i) for i in ids)
        version = await asyncio.to_thread(col.commit, ids, records, vectors)
        self.metrics.ingested_documents.labels(collection).inc(len(documents))
        self.metrics.ingested_chunks.labels(collection).inc(len(records))
        return IngestResult(collection, version, len(documents), len(records), replaced)

    async def delete_document(self, collection: str, document_id: str) -> tuple[int, int]:
        """Durably remove a document; returns (chunks removed, new version)."""
        col = self.collection(collection)
        removed, version = await asyncio.to_thread(col.delete_document, document_id)
        self.metrics.deleted_documents.labels(collection).inc()
        return removed, version

    # ---- retrieval -----------------------------------------------------------
    async def retrieve(
        self, collection: str, query: str, top_k: int = 4, filters: Filters | None = None
    ) -> Retrieval:
        """The ``top_k`` chunks most similar to ``query``, filtered by metadata equality."""
        t0 = time.perf_counter()
        col = self.collection(collection)
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("query must be a non-empty string", "query")
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidInputError(f"top_k must be between 1 and {MAX_TOP_K}", "top_k")
        caches = self._require_caches()
        manifest = col.manifest
        key = caches.retrieval_key(
            collection, manifest.uid, manifest.version, query, top_k, filters or {}
        )
        cached = await caches.get_retrieval(key)
        if cached is not None:
            self.metrics.retrieval_cache_hits.inc()
            chunks = [Chunk.from_dict(c) for c in cached]
            self.metrics.retrieval_latency.observe(time.perf_counter() - t0)
            return Retrieval(collection, manifest.version, chunks, cached=True)
        self.metrics.retrieval_cache_misses.inc()
        (vector,) = await self._embed_cached([query])
        hits = await asyncio.to_thread(col.search, vector, top_k, filters)
        chunks = [
            Chunk(h.chunk.document_id, h.chunk.chunk_id, h.chunk.text, h.score, h.chunk.metadata)
            for h in hits
        ]
        await caches.set_retrieval(key, [c.to_dict() for c in chunks])
        self.metrics.retrieval_latency.observe(time.perf_counter() - t0)
        return Retrieval(collection, manifest.version, chunks, cached=False)

    async def embed(self, texts: list[str]) -> Embeddings:
        """Unit vectors for texts (query-embedding cache first) and the tokens they used."""
        if not texts:
            raise InvalidInputError("input must not be empty", "input")
        vectors = await self._embed_cached(texts)
        tokens = sum(await asyncio.to_thread(self.embedder.count_tokens, texts))
        return Embeddings([v.tolist() for v in vectors], tokens, self.embedder.model_name)

    # ---- internals -----------------------------------------------------------
    async def _embed_cached(self, texts: list[str]) -> np.ndarray:
        caches = self._require_caches()
        found = await caches.get_embeddings(texts)
        out = np.empty((len(texts), self.embedder.dimension), dtype=np.float32)
        missing = [i for i, v in enumerate(found) if v is None or len(v) != len(out[0])]
        for i, v in enumerate(found):
            if i not in missing and v is not None:
                out[i] = v
        self.metrics.embedding_cache_hits.inc(len(texts) - len(missing))
        self.metrics.embedding_cache_misses.inc(len(missing))
        if missing:
            fresh = await self._embed_uncached([texts[i] for i in missing], "query")
            out[missing] = fresh
            await caches.set_embeddings([texts[i] for i in missing], fresh)
        return out

    async def _embed_uncached(self, texts: list[str], purpose: str) -> np.ndarray:
        if self._batcher is None:
            raise RagUnavailableError("the RAG service is loading; retry shortly")
        self.metrics.embedded_texts.labels(purpose).inc(len(texts))
        return await self._batcher.embed(texts)

    def _observe_batch(self, size: int, seconds: float) -> None:
        self.metrics.embedding_batch_size.observe(size)
        self.metrics.embed_latency.observe(seconds)

    def _require_ready(self) -> None:
        if not self.ready:
            raise RagUnavailableError("the RAG service is loading; retry shortly")

    def _require_caches(self) -> RagCaches:
        self._require_ready()
        assert self._caches is not None
        return self._caches

    def collection(self, name: str) -> Collection:
        """The loaded collection of that name (CollectionNotFoundError if none)."""
        self._require_ready()
        col = self._collections.get(name)
        if col is None:
            raise CollectionNotFoundError(f"collection {name!r} does not exist", "collection")
        return col

    def _all_stats(self) -> list[CollectionStats]:
        return [c.stats() for c in list(self._collections.values())]

    def _cache_errors(self) -> int:
        return self._caches.store.errors if self._caches is not None else 0

    def _open_collections(self) -> dict[str, Collection]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        assert self._embedder is not None
        dim = self._embedder.dimension
        collections = {}
        for path in sorted(self.data_dir.iterdir()):
            if path.name.startswith("."):  # an interrupted create or delete
                shutil.rmtree(path, ignore_errors=True)
                continue
            if path.is_dir():
                col = Collection.load(path, dim, self.config.index)
                collections[col.manifest.name] = col
        return collections

    @staticmethod
    def _remove_directory(col: Collection) -> None:
        """Rename out of sight (atomic), then delete; a crash midway leaves only a dot-dir."""
        with col.closing():
            hidden = col.directory.parent / f".deleted-{col.manifest.uid}"
            col.directory.rename(hidden)
            shutil.rmtree(hidden, ignore_errors=True)

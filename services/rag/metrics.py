"""The RAG part of the metric catalogue (prefix ``tessera_rag_``), on a given registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.rag.collection import CollectionStats

RETRIEVAL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
EMBED_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
P = "tessera_rag_"


class _CollectionCollector(Collector):
    """Per-collection gauges read from the collections at scrape time."""

    def __init__(
        self, collections: Callable[[], list[CollectionStats]], cache_errors: Callable[[], int]
    ) -> None:
        self._collections = collections
        self._cache_errors = cache_errors

    def collect(self) -> Iterator[Metric]:
        stats = self._collections()
        size = GaugeMetricFamily(
            P + "index_size",
            "Live chunks (vectors) in a collection's index.",
            labels=["collection"],
        )
        docs = GaugeMetricFamily(
            P + "documents", "Documents in a collection.", labels=["collection"]
        )
        version = GaugeMetricFamily(
            P + "collection_version", "Committed version of a collection.", labels=["collection"]
        )
        approx = GaugeMetricFamily(
            P + "index_approximate",
            "1 when a collection is served by HNSW, 0 for exact search.",
            labels=["collection"],
        )
        for s in stats:
            size.add_metric([s.name], s.chunks)
            docs.add_metric([s.name], s.documents)
            version.add_metric([s.name], s.version)
            approx.add_metric([s.name], 1 if s.index_type == "hnsw" else 0)
        yield from (size, docs, version, approx)
        yield GaugeMetricFamily(P + "collections", "Collections loaded.", value=len(stats))
        yield CounterMetricFamily(
            P + "cache_errors",
            "Cache calls that failed and counted as misses.",
            value=self._cache_errors(),
        )


class RagMetrics:
    """Counters and histograms the service observes as it works."""

    def __init__(
        self,
        registry: CollectorRegistry,
        collections: Callable[[], list[CollectionStats]],
        cache_errors: Callable[[], int],
    ) -> None:
        registry.register(_CollectionCollector(collections, cache_errors))
        self.retrieval_latency = Histogram(
            P + "retrieval_latency_seconds",
            "Time to answer a retrieve call (embedding, search and caches included).",
            buckets=RETRIEVAL_BUCKETS,
            registry=registry,
        )
        self.embed_latency = Histogram(
            P + "embedding_batch_latency_seconds",
            "Time of one embedding model call.",
            buckets=EMBED_BUCKETS,
            registry=registry,
        )
        self.embedding_batch_size = Histogram(
            P + "embedding_batch_size",
            "Texts per embedding model call (dynamic batching).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.ingested_documents = Counter(
            P + "ingested_documents", "Documents ingested.", ["collection"], registry=registry
        )
        self.ingested_chunks = Counter(
            P + "ingested_chunks", "Chunks ingested.", ["collection"], registry=registry
        )
        self.deleted_documents = Counter(
            P + "deleted_documents", "Documents deleted.", ["collection"], registry=registry
        )
        self.embedding_cache_hits = Counter(
            P + "embedding_cache_hits", "Query embeddings found in the cache.", registry=registry
        )
        self.embedding_cache_misses = Counter(
            P + "embedding_cache_misses", "Query embeddings computed.", registry=registry
        )
        self.retrieval_cache_hits = Counter(
            P + "retrieval_cache_hits", "Retrievals answered from the cache.", registry=registry
        )
        self.retrieval_cache_misses = Counter(
            P + "retrieval_cache_misses", "Retrievals searched in the index.", registry=registry
        )
        self.embedded_texts = Counter(
            P + "embedded_texts", "Texts embedded by the model.", ["purpose"], registry=registry
        )

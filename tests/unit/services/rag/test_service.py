"""RagService in process: ingest, retrieve, caches invalidated by versions, typed errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.rag.documents import Document
from services.rag.embedder import Embedder
from services.rag.errors import (
    CollectionExistsError,
    CollectionNotFoundError,
    DocumentNotFoundError,
    InvalidInputError,
    RagUnavailableError,
)
from services.rag.service import RagService
from tests.unit.services.rag.helpers import rag_config

DOCS = [
    Document(
        "paris",
        "Paris is the capital of France and home of the Eiffel Tower.",
        "text",
        {"lang": "en", "year": 2020},
    ),
    Document(
        "rust",
        "Rust is a programming language with a borrow checker.",
        "text",
        {"lang": "en", "year": 2021},
    ),
    Document("berlin", "Berlin ist die Hauptstadt von Deutschland.", "text", {"lang": "de"}),
]


@pytest.fixture
async def service(tmp_path: Path, int8_embedder: Embedder) -> AsyncIterator[RagService]:
    svc = RagService(rag_config(tmp_path), embedder=int8_embedder)
    await svc.start()
    await svc.create_collection("kb")
    await svc.ingest("kb", DOCS)
    yield svc
    await svc.close()


def counter(svc: RagService, name: str) -> float:
    value = svc.registry.get_sample_value(name)
    return value or 0.0


async def test_retrieve_ranks_the_answering_chunk_first_with_metadata(service: RagService):
    result = await service.retrieve("kb", "What is the capital of France?", 2)
    top = result.chunks[0]
    assert (top.document_id, top.chunk_id) == ("paris", "paris#0")
    assert top.metadata == {"lang": "en", "year": 2020}
    assert 0.3 < top.score <= 1.0 and top.score > result.chunks[1].score


async def test_filters_restrict_results(service: RagService):
    result = await service.retrieve("kb", "capital city", 5, {"lang": "de"})
    assert [c.document_id for c in result.chunks] == ["berlin"]
    result = await service.retrieve("kb", "capital city", 5, {"year": [2021]})
    assert [c.document_id for c in result.chunks] == ["rust"]


async def test_retrieval_cache_hits_until_an_ingest_changes_the_version(service: RagService):
    first = await service.retrieve("kb", "borrow checker", 1)
    again = await service.retrieve("kb", "borrow checker", 1)
    assert (first.cached, again.cached) == (False, True)
    assert again.chunks == first.chunks
    assert counter(service, "tessera_rag_retrieval_cache_hits_total") == 1
    await service.ingest("kb", [Document("borrow", "The borrow checker enforces ownership.")])
    after = await service.retrieve("kb", "borrow checker", 1)
    assert after.cached is False and after.version == first.version + 1
    assert after.chunks[0].document_id == "borrow"


async def test_query_embeddings_are_cached(service: RagService):
    await service.retrieve("kb", "a question", 1)
    await service.retrieve("kb", "a question", 2)  # new retrieval key, same query text
    assert counter(service, "tessera_rag_embedding_cache_hits_total") == 1
    assert counter(service, "tessera_rag_embedding_cache_misses_total") == 1


async def test_recreated_collection_never_sees_old_cached_results(service: RagService):
    await service.retrieve("kb", "Eiffel Tower", 1)
    await service.delete_collection("kb")
    await service.create_collection("kb")
    await service.ingest("kb", [Document("other", "Something else entirely.")])
    result = await service.retrieve("kb", "Eiffel Tower", 1)
    assert result.cached is False and result.chunks[0].document_id == "other"


async def test_delete_document_removes_it_from_results(service: RagService):
    removed, version = await service.delete_document("kb", "paris")
    assert removed == 1
    result = await service.retrieve("kb", "What is the capital of France?", 3)
    assert "paris" not in {c.document_id for c in result.chunks}
    assert result.version == version
    with pytest.raises(DocumentNotFoundError):
        await service.delete_document("kb", "paris")


async def test_reingest_replaces_and_reports_it(service: RagService):
    result = await service.ingest("kb", [Document("rust", "Rust has fearless concurrency.")])
    assert result.replaced == 1
    stats = service.collection_stats("kb")
    assert (stats.documents, stats.chunks) == (3, 3)


async def test_state_survives_a_restart(tmp_path: Path, int8_embedder: Embedder):
    config = rag_config(tmp_path)
    first = RagService(config, embedder=int8_embedder)
    await first.start()
    await first.create_collection("kb", {"owner": "tests"})
    await first.ingest("kb", DOCS)
    await first.close()
    second = RagService(config, embedder=int8_embedder)
    await second.start()
    stats = second.collection_stats("kb")
    assert (stats.documents, stats.version, stats.metadata["owner"]) == (3, 1, "tests")
    assert (await second.retrieve("kb", "borrow checker", 1)).chunks[0].document_id == "rust"
    await second.close()


async def test_chunk_size_override_makes_more_chunks(service: RagService):
    text = " ".join(f"Sentence number {i} says something." for i in range(60))
    small = await service.ingest("kb", [Document("long", text)], chunk_size=32, chunk_overlap=8)
    large = await service.ingest("kb", [Document("long", text)], chunk_size=200, chunk_overlap=8)
    assert small.chunks > large.chunks >= 2


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.retrieve("missing", "q"), CollectionNotFoundError),
        (lambda s: s.retrieve("kb", "  "), InvalidInputError),
        (lambda s: s.retrieve("kb", "q", 0), InvalidInputError),
        (lambda s: s.retrieve("kb", "q", 1, {"lang": {"$ne": 1}}), InvalidInputError),
        (lambda s: s.ingest("kb", []), InvalidInputError),
        (lambda s: s.ingest("kb", [Document("a", "x"), Document("a", "y")]), InvalidInputError),
        (lambda s: s.ingest("kb", [Document("a", "x")], chunk_size=600), InvalidInputError),
        (lambda s: s.create_collection("kb"), CollectionExistsError),
        (lambda s: s.create_collection("../etc"), InvalidInputError),
        (lambda s: s.embed([]), InvalidInputError),
    ],
)
async def test_bad_calls_raise_typed_errors(service: RagService, call, error):
    with pytest.raises(error):
        await call(service)


async def test_not_started_service_is_unavailable(tmp_path: Path, int8_embedder: Embedder):
    svc = RagService(rag_config(tmp_path), embedder=int8_embedder)
    with pytest.raises(RagUnavailableError):
        await svc.retrieve("kb", "q")

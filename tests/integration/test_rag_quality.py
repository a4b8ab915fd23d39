"""Retrieval quality on the labelled set (tests/data/rag): recall@4 through the HTTP sidecar,
and the INT8 embedder retrieving what the float one does."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.rag.client import HttpRagClient
from services.rag.config import EmbedderConfig
from services.rag.embedder import build_embedder
from services.rag.server import RagServer
from services.rag.service import RagService
from tests.unit.services.rag.helpers import dataset_documents, dataset_questions, rag_config

TOP_K = 4


async def retrieve_all(service: RagService) -> list[list[str]]:
    await service.create_collection("kb")
    await service.ingest("kb", dataset_documents())
    out = []
    for question, _ in dataset_questions():
        result = await service.retrieve("kb", question, TOP_K)
        out.append([c.chunk_id for c in result.chunks])
    return out


@pytest.fixture(scope="module")
def embedders() -> dict[str, object]:
    return {q: build_embedder(EmbedderConfig(quantization=q)) for q in ("int8", "none")}


async def test_recall_at_4_through_the_http_service(tmp_path: Path, embedders: dict):
    docs, questions = dataset_documents(), dataset_questions()
    assert len(docs) >= 20 and len(questions) >= 50
    config = rag_config(tmp_path, redis=True)
    server = RagServer(config, RagService(config, embedder=embedders["int8"]))  # type: ignore[arg-type]
    await server.start()
    await server.load()
    client = HttpRagClient(f"http://127.0.0.1:{server.port}")
    try:
        await client.create_collection("kb")
        await client.ingest("kb", docs)
        found = 0
        for question, answer in questions:
            chunks = await client.retrieve("kb", question, TOP_K)
            found += answer in {c.document_id for c in chunks}
    finally:
        await client.close()
        await server.stop()
    recall = found / len(questions)
    print(f"recall@{TOP_K} = {recall:.3f} over {len(questions)} questions")
    assert recall >= 0.9


async def test_int8_retrieves_what_float_retrieves(tmp_path: Path, embedders: dict):
    results = {}
    for name, embedder in embedders.items():
        service = RagService(rag_config(tmp_path / name), embedder=embedder)  # type: ignore[arg-type]
        await service.start()
        results[name] = await retrieve_all(service)
        await service.close()
    labels = [answer for _, answer in dataset_questions()]
    pairs = list(zip(results["int8"], results["none"], strict=True))
    # the labelled answer is in the top k for exactly the same questions
    for (int8, flt), answer in zip(pairs, labels, strict=True):
        in_int8 = answer in {c.split("#")[0] for c in int8}
        in_float = answer in {c.split("#")[0] for c in flt}
        assert in_int8 == in_float, answer
    same_top1 = sum(a[0] == b[0] for a, b in pairs) / len(pairs)
    overlap = sum(len(set(a) & set(b)) for a, b in pairs) / (TOP_K * len(pairs))
    same_sets = sum(set(a) == set(b) for a, b in pairs) / len(pairs)
    print(
        f"int8 vs float: top-1 same {same_top1:.3f}, top-{TOP_K} overlap {overlap:.3f}, "
        f"identical top-{TOP_K} sets {same_sets:.3f}"
    )
    assert same_top1 >= 0.95 and overlap >= 0.9

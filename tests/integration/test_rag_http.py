"""The RAG sidecar over HTTP with a real Redis: OpenAI embeddings, collections, errors, probes."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from services.rag.client import HttpRagClient
from services.rag.config import EmbedderConfig
from services.rag.documents import Document
from services.rag.embedder import Embedder, build_embedder
from services.rag.errors import CollectionNotFoundError, InvalidInputError, RagUnavailableError
from services.rag.local_client import InProcessRagClient
from services.rag.server import RagServer
from services.rag.service import RagService
from tests.unit.services.rag.helpers import rag_config

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return build_embedder(EmbedderConfig(quantization="int8"))


@pytest.fixture
async def server(tmp_path: Path, embedder: Embedder) -> AsyncIterator[RagServer]:
    config = rag_config(tmp_path, redis=True)
    srv = RagServer(config, RagService(config, embedder=embedder))
    await srv.start()
    await srv.load()
    yield srv
    await srv.stop()


@pytest.fixture
async def http(server: RagServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        yield client


async def test_openai_client_gets_embeddings_in_the_openai_shape(server: RagServer):
    openai = pytest.importorskip("openai")
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x")
    result = await client.embeddings.create(model=MODEL, input=["first text", "second"])
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 384
    assert result.model == MODEL and result.usage.prompt_tokens == result.usage.total_tokens > 0
    # the python client asks for base64 by default when numpy is installed; plain floats too
    floats = await client.embeddings.create(
        model=MODEL, input="first text", encoding_format="float"
    )
    assert np.allclose(floats.data[0].embedding, result.data[0].embedding, atol=1e-6)
    await client.close()


async def test_embeddings_base64_is_little_endian_float32(http: httpx.AsyncClient):
    body = {"model": MODEL, "input": "hello", "encoding_format": "base64"}
    data = (await http.post("/v1/embeddings", json=body)).json()
    vec = np.frombuffer(base64.b64decode(data["data"][0]["embedding"]), dtype="<f4")
    assert vec.shape == (384,) and abs(np.linalg.norm(vec) - 1) < 1e-5
    assert data["object"] == "list" and data["data"][0]["object"] == "embedding"


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"model": MODEL, "input": ""}, 400, "input", "invalid_value"),
        ({"model": MODEL, "input": []}, 400, "input", "invalid_value"),
        ({"model": MODEL, "input": [[1, 2, 3]]}, 400, "input", "invalid_value"),
        ({"model": MODEL}, 400, "input", "invalid_value"),
        ({"model": MODEL, "input": 5}, 400, "input", "invalid_value"),
        ({"model": "text-embedding-3-small", "input": "x"}, 404, "model", "model_not_found"),
        ({"model": MODEL, "input": "x", "dimensions": 128}, 400, "dimensions", "invalid_value"),
        ({"model": MODEL, "input": "x", "encoding_format": "hex"}, 400, "encoding_format", None),
        ({"model": MODEL, "input": "x", "stream": True}, 400, "stream", None),
    ],
)
async def test_bad_embedding_requests_get_openai_error_bodies(
    http: httpx.AsyncClient, body: dict, status: int, param: str, code: str | None
):
    response = await http.post("/v1/embeddings", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    if code:
        assert error["code"] == code


async def test_malformed_json_and_unknown_routes_are_error_bodies(http: httpx.AsyncClient):
    response = await http.post(
        "/v1/embeddings", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    response = await http.get("/v1/nothing-here")
    assert response.status_code == 404 and response.json()["error"]["type"]


async def test_collection_lifecycle_and_retrieval_over_http(http: httpx.AsyncClient):
    created = await http.post("/v1/collections", json={"name": "kb", "metadata": {"team": "a"}})
    assert created.status_code == 201 and created.json()["index_type"] == "flat"
    assert (await http.post("/v1/collections", json={"name": "kb"})).status_code == 409
    docs = [
        {"id": "fr", "text": "Paris is the capital of France.", "metadata": {"lang": "en"}},
        {"id": "de", "text": "Berlin is the capital of Germany.", "metadata": {"lang": "en"}},
    ]
    ingest = (await http.post("/v1/collections/kb/documents", json={"documents": docs})).json()
    assert (ingest["documents"], ingest["chunks"], ingest["version"]) == (2, 2, 1)
    query = {"query": "capital of Germany", "top_k": 1}
    hit = (await http.post("/v1/collections/kb/retrieve", json=query)).json()
    assert hit["data"][0]["document_id"] == "de" and hit["cached"] is False
    assert set(hit["data"][0]) == {"document_id", "chunk_id", "text", "score", "metadata"}
    again = (await http.post("/v1/collections/kb/retrieve", json=query)).json()
    assert again["cached"] is True and again["data"] == hit["data"]
    gone = (await http.delete("/v1/collections/kb/documents/de")).json()
    assert gone["deleted"] and gone["version"] == 2
    after = (await http.post("/v1/collections/kb/retrieve", json=query)).json()
    assert after["cached"] is False and after["data"][0]["document_id"] == "fr"
    listed = (await http.get("/v1/collections")).json()["data"]
    assert [(c["name"], c["documents"], c["metadata"]["team"]) for c in listed] == [("kb", 1, "a")]
    assert (await http.delete("/v1/collections/kb")).json()["deleted"] is True
    missing = await http.post("/v1/collections/kb/retrieve", json=query)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "collection_not_found"


async def test_file_uploads_markdown_and_jsonl(http: httpx.AsyncClient):
    await http.post("/v1/collections", json={"name": "files"})
    md = "# Guide\nRead this first.\n## Setup\nInstall the package with pip.\n"
    up = await http.post(
        "/v1/collections/files/files?id=guide&metadata=%7B%22kind%22%3A%22doc%22%7D",
        content=md.encode(),
        headers={"content-type": "text/markdown"},
    )
    assert up.status_code == 200 and up.json()["chunks"] == 2
    lines = '{"id": "a", "text": "Apples are red."}\n{"id": "b", "text": "Bananas are yellow."}\n'
    up = await http.post(
        "/v1/collections/files/files",
        content=lines.encode(),
        headers={"content-type": "application/x-ndjson"},
    )
    assert up.json()["documents"] == 2
    q = {"query": "how do I install it", "top_k": 1, "filters": {"kind": "doc"}}
    top = (await http.post("/v1/collections/files/retrieve", json=q)).json()["data"][0]
    assert top["metadata"] == {"kind": "doc", "section": "Guide > Setup"}
    bad = await http.post(
        "/v1/collections/files/files",
        content=b"{broken\n",
        headers={"content-type": "application/x-ndjson"},
    )
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("line 1")
    nofmt = await http.post("/v1/collections/files/files", content=b"x")
    assert nofmt.status_code == 400 and nofmt.json()["error"]["param"] == "format"


async def test_probes_and_metrics(server: RagServer, http: httpx.AsyncClient):
    assert (await http.get("/health")).json() == {"status": "ok"}
    assert (await http.get("/ready")).status_code == 200
    await http.post("/v1/collections", json={"name": "m"})
    await http.post("/v1/collections/m/documents", json={"documents": [{"id": "x", "text": "t"}]})
    await http.post("/v1/collections/m/retrieve", json={"query": "t"})
    text = (await http.get("/metrics")).text
    for name in (
        'tessera_rag_index_size{collection="m"} 1.0',
        'tessera_rag_ingested_documents_total{collection="m"} 1.0',
        'tessera_rag_ingested_chunks_total{collection="m"} 1.0',
        "tessera_rag_retrieval_latency_seconds_count 1.0",
        "tessera_rag_embedding_batch_size_count",
        "tessera_rag_embedding_cache_misses_total 1.0",
        "tessera_rag_retrieval_cache_misses_total 1.0",
        "tessera_rag_ready 1.0",
    ):
        assert name in text, name
    await server.drain(timeout=1)
    assert (await http.get("/ready")).status_code == 503
    refused = await http.post("/v1/collections/m/retrieve", json={"query": "t"})
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"


async def test_http_and_in_process_clients_agree_and_raise_typed_errors(server: RagServer):
    remote = HttpRagClient(f"http://127.0.0.1:{server.port}")
    local = InProcessRagClient(server.service)
    await remote.create_collection("c")
    await local.ingest("c", [Document("d1", "Dolphins are marine mammals.", metadata={"n": 1})])
    a = await remote.retrieve("c", "sea mammal", 1, {"n": 1})
    b = await local.retrieve("c", "sea mammal", 1, {"n": 1})
    assert a == b and a[0].chunk_id == "d1#0"
    va, vb = await remote.embed(["x", "y"]), await local.embed(["x", "y"])
    assert np.allclose(va.vectors, vb.vectors, atol=1e-6) and va.prompt_tokens == vb.prompt_tokens
    card = await remote.model_card()
    assert card == await local.model_card()
    assert card.created == server.service.created > 0 and card.dimension == len(va.vectors[0])
    for client in (remote, local):
        with pytest.raises(CollectionNotFoundError):
            await client.retrieve("nope", "q")
        with pytest.raises(InvalidInputError):
            await client.retrieve("c", "q", 0)
    await remote.close()
    dead = HttpRagClient("http://127.0.0.1:1", timeout=1.0)
    with pytest.raises(RagUnavailableError):
        await dead.retrieve("c", "q")
    await dead.close()


async def test_oversized_body_is_refused_before_parsing(server: RagServer):
    from services.rag.api.app import build_app

    app = build_app(server.service, server.lifecycle, max_request_bytes=2048)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://rag") as client:
        body = {"model": MODEL, "input": "x" * 4096}
        response = await client.post("/v1/embeddings", json=body)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

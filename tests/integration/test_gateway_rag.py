"""RAG through the gateway: chat with retrieval returns grounded prompts and citations
(response and the stream's first chunk), /v1/embeddings, and the semantic cache scoped
per API key."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest

from engine.model_source import ModelBundle, load_model
from gateway.server import GatewayServer
from tests.integration.gateway_fixtures import new_key, running_gateway

MODEL = "dummy:tiny"
KEY_A, KEY_B = new_key(), new_key()
DOCS = [
    {
        "id": "lighthouse",
        "text": "The Bell Rock Lighthouse stands off the coast of Angus, "
        "Scotland. It was built between 1807 and 1810 by Robert Stevenson.",
    },
    {
        "id": "tessera",
        "text": "A tessera is a small block of stone, tile or glass used to "
        "make a mosaic. The plural is tesserae.",
    },
    {
        "id": "volcano",
        "text": "Mount Etna on Sicily is one of the most active volcanoes in "
        "the world and erupts frequently.",
    },
]


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return load_model("dummy:tiny", seed=3)


@pytest.fixture
async def gateway(tiny: ModelBundle, tmp_path: Path) -> AsyncIterator[GatewayServer]:
    async with running_gateway(
        tiny,
        rag={"enabled": True, "port": 0, "data_dir": tmp_path / "rag"},
        semantic_cache={"enabled": True, "threshold": 0.9},
        auth={"api_keys": [KEY_A, KEY_B]},
    ) as server:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.rag_port}") as rag:
            r = await rag.post("/v1/collections", json={"name": "facts"})
            assert r.status_code in (200, 201), r.text
            r = await rag.post("/v1/collections/facts/documents", json={"documents": DOCS})
            assert r.status_code in (200, 201), r.text
        yield server


def client(server: GatewayServer, key: str = KEY_A) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{server.port}/v1", api_key=key, max_retries=0
    )


async def test_chat_with_retrieval_cites_the_right_document(gateway: GatewayServer) -> None:
    c = client(gateway)
    question = [{"role": "user", "content": "Who built the Bell Rock Lighthouse?"}]
    r = await c.chat.completions.create(
        model=MODEL,
        messages=question,
        max_tokens=8,
        temperature=0,
        extra_body={"rag": {"collection": "facts", "top_k": 2}},
    )
    citations = r.model_extra["citations"]  # type: ignore[index]
    assert citations[0]["document_id"] == "lighthouse"
    assert len(citations) == 2 and citations[0]["score"] >= citations[1]["score"]
    plain = await c.chat.completions.create(
        model=MODEL, messages=question, max_tokens=8, temperature=0, extra_body={"ignore_eos": True}
    )
    # the retrieved context is in the prompt: more prompt tokens than the bare question
    assert r.usage.prompt_tokens > plain.usage.prompt_tokens + 20  # type: ignore[union-attr]

    stream = await c.chat.completions.create(
        model=MODEL,
        messages=question,
        max_tokens=4,
        stream=True,
        extra_body={"rag": {"collection": "facts", "top_k": 1}},
    )
    first = await anext(aiter(stream))
    assert first.model_extra["citations"][0]["document_id"] == "lighthouse"  # type: ignore[index]
    async for _ in stream:
        pass

    with pytest.raises(openai.NotFoundError) as err:
        await c.chat.completions.create(
            model=MODEL, messages=question, max_tokens=4, extra_body={"rag": {"collection": "nope"}}
        )
    assert err.value.body["code"] == "collection_not_found"  # type: ignore[index]


async def test_embeddings_through_the_gateway(gateway: GatewayServer) -> None:
    c = client(gateway)
    model = gateway.gateway.embedding_model
    r = await c.embeddings.create(model=model, input=["a tile of a mosaic", "a volcano"])
    assert [d.index for d in r.data] == [0, 1] and len(r.data[0].embedding) == 384
    assert r.usage.prompt_tokens > 0
    floats = await c.embeddings.create(model=model, input="a tile")
    b64 = await c.embeddings.create(model=model, input="a tile", encoding_format="base64")
    decoded = np.frombuffer(base64.b64decode(b64.data[0].embedding), dtype="<f4")  # type: ignore[arg-type]
    assert np.allclose(decoded, floats.data[0].embedding, atol=1e-6)
    with pytest.raises(openai.NotFoundError):
        await c.embeddings.create(model="text-embedding-3-small", input="x")
    with pytest.raises(openai.BadRequestError):
        await c.embeddings.create(model=model, input=[])


async def test_semantic_cache_reuses_answers_within_a_key_only(gateway: GatewayServer) -> None:
    url = f"http://127.0.0.1:{gateway.port}/v1/chat/completions"

    def body(text: str) -> dict:
        return {
            "model": MODEL,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 12,
            "temperature": 0.9,
        }

    a = {"Authorization": f"Bearer {KEY_A}"}
    async with httpx.AsyncClient(timeout=60) as http:
        first = await http.post(url, json=body("What is the capital city of France?"), headers=a)
        assert first.headers.get("x-tessera-cache") is None
        again = await http.post(url, json=body("What is the capital city of France ?"), headers=a)
        assert again.headers["x-tessera-cache"] == "semantic-hit"
        assert again.json()["choices"] == first.json()["choices"]
        other_key = await http.post(
            url,
            json=body("What is the capital city of France?"),
            headers={"Authorization": f"Bearer {KEY_B}"},
        )
        assert other_key.headers.get("x-tessera-cache") is None
        unrelated = await http.post(url, json=body("How do volcanoes erupt?"), headers=a)
        assert unrelated.headers.get("x-tessera-cache") is None


async def test_grpc_embeddings_and_chat_with_retrieval(gateway: GatewayServer) -> None:
    from tessera.v1 import chat_pb2, embeddings_pb2, service_pb2_grpc

    md = (("authorization", f"Bearer {KEY_A}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = service_pb2_grpc.TesseraStub(channel)
        emb = await stub.CreateEmbeddings(
            embeddings_pb2.EmbeddingRequest(
                model=gateway.gateway.embedding_model, input=["a mosaic tile"]
            ),
            metadata=md,
        )
        assert len(emb.data[0].embedding) == 384 and emb.usage.prompt_tokens > 0
        chat = await stub.CreateChatCompletion(
            chat_pb2.ChatCompletionRequest(
                model=MODEL,
                messages=[chat_pb2.ChatMessage(role="user", content="What is a tessera?")],
                rag=chat_pb2.RagOptions(collection="facts", top_k=1),
            ),
            metadata=md,
        )
        assert chat.citations[0].document_id == "tessera"


async def test_models_list_the_embedding_model_with_kind_and_load_time(
    gateway: GatewayServer,
) -> None:
    """/v1/models and gRPC ListModels list the engine's model and the embedder, each with
    its kind and the time it was loaded (not a constant)."""
    from tessera.v1 import models_pb2, service_pb2_grpc

    listed = {m.id: m for m in (await client(gateway).models.list()).data}
    assert set(listed) == {MODEL, gateway.gateway.embedding_model}
    generation, embedding = listed[MODEL], listed[gateway.gateway.embedding_model]
    assert generation.kind == "generation" and embedding.kind == "embedding"  # type: ignore[attr-defined]
    engine = gateway.gateway.pool.endpoints["local"].client.engine  # type: ignore[attr-defined]
    assert generation.created == engine.created
    assert embedding.max_model_len > 0  # type: ignore[attr-defined]
    assert abs(embedding.created - generation.created) < 600  # both loaded at start-up
    one = await client(gateway).models.retrieve(gateway.gateway.embedding_model)
    assert one.created == embedding.created

    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        stub = service_pb2_grpc.TesseraStub(channel)
        reply = await stub.ListModels(
            models_pb2.ListModelsRequest(), metadata=(("authorization", f"Bearer {KEY_A}"),)
        )
    assert {(m.id, m.kind, m.created) for m in reply.data} == {
        (MODEL, "generation", generation.created),
        (embedding.id, "embedding", embedding.created),
    }

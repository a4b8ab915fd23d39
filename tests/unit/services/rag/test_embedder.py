"""The compiled MiniLM encoder: faithful to the reference in float, within the gate in INT8."""

from __future__ import annotations

import numpy as np
import pytest

from services.rag.compile import artifact_dir, compiled_model
from services.rag.embedder import Embedder
from services.rag.model_files import locate_model
from tests.unit.services.rag.helpers import dataset_questions, dataset_sentences

MIXED = [
    "ok",
    "The capital of France is Paris.",
    "Photosynthesis converts light energy into chemical energy in plants, releasing oxygen.",
    "who wrote hamlet",
]


def reference_embeddings(texts: list[str]) -> np.ndarray:
    """transformers' BertModel on the same safetensors, mean-pooled and normalised in torch."""
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer
    from transformers import BertModel

    files = locate_model()
    tok = Tokenizer.from_file(str(files.tokenizer))
    tok.no_padding()  # tokenizer.json pads to 128; the reference reads real tokens only
    model = BertModel.from_pretrained(str(files.directory), local_files_only=True).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok.encode(text).ids])
            hidden = model(input_ids=ids).last_hidden_state[0].mean(0)
            out.append(torch.nn.functional.normalize(hidden, dim=0).numpy())
    return np.stack(out)


def test_float_onnx_matches_transformers_reference_in_padded_batches(float_embedder: Embedder):
    ours = float_embedder.embed(MIXED)  # one padded batch of very different lengths
    cosine = (ours * reference_embeddings(MIXED)).sum(1)
    assert cosine.min() > 0.99999


def test_embeddings_are_unit_length_and_order_preserving(int8_embedder: Embedder):
    vectors = int8_embedder.embed(MIXED)
    assert vectors.shape == (len(MIXED), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    one_by_one = np.stack([int8_embedder.embed([t])[0] for t in MIXED])
    assert ((vectors * one_by_one).sum(1) > 0.999).all()


def test_int8_cosine_gate_against_float(int8_embedder: Embedder, float_embedder: Embedder):
    texts = dataset_sentences() + [q for q, _ in dataset_questions()]
    assert len(texts) >= 200
    cosine = (int8_embedder.embed(texts) * float_embedder.embed(texts)).sum(1)
    assert cosine.min() >= 0.99, texts[int(cosine.argmin())]
    assert cosine.mean() >= 0.995


def test_inputs_longer_than_max_seq_length_are_truncated(int8_embedder: Embedder):
    long_text = "word " * 1000
    assert int8_embedder.count_tokens([long_text, "hi"]) == [256, 3]
    assert int8_embedder.embed([long_text]).shape == (1, 384)


def test_token_offsets_cover_the_text_without_special_tokens(int8_embedder: Embedder):
    text = "Hello, world! Tokenizers split text."
    spans = int8_embedder.token_offsets(text)
    assert text[spans[0][0] : spans[0][1]] == "Hello"
    assert spans[-1][1] == len(text)


def test_compiled_artifacts_are_reused_not_rebuilt(int8_embedder: Embedder):
    files = locate_model()
    path = compiled_model(files, "int8", "per_token")
    assert path.parent == artifact_dir(files, None)
    before = path.stat().st_mtime_ns
    assert compiled_model(files, "int8", "per_token") == path
    assert path.stat().st_mtime_ns == before

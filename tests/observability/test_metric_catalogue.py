"""One catalogue: the doc matches the code, and every metric a dashboard, alert rule,
HPA or KEDA trigger names is one the code exports."""

from __future__ import annotations

import json
import re

from tests.observability.catalogue import CATALOGUE, ROOT, exported, referenced, series_names


def exposed_series() -> set[str]:
    names: set[str] = set()
    for doc in exported().values():
        names |= series_names(doc.name, doc.type)
    return names


def test_catalogue_doc_matches_the_code() -> None:
    rows = re.findall(
        r"^\| `(tessera_[a-z0-9_]+)` \| (\w+) \| ([^|]*) \|", CATALOGUE.read_text(), re.M
    )
    documented = {name: (kind, labels.strip()) for name, kind, labels in rows}
    actual = {d.name: (d.type, ", ".join(d.labels) or "—") for d in exported().values()}
    assert documented == actual


def test_every_metric_used_by_dashboards_rules_and_autoscalers_is_exported() -> None:
    users = list((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
    users += [ROOT / "deploy" / "prometheus" / "alerts.yml"]
    users += [
        p
        for d in ("helm", "deploy/k8s")
        for p in (ROOT / d).rglob("*")
        if p.is_file() and p.suffix in (".yaml", ".yml", ".tpl", ".json")
    ]
    assert len(users) >= 3
    exposed = exposed_series()
    for path in users:
        missing = referenced(path.read_text()) - exposed
        assert not missing, (
            f"{path.relative_to(ROOT)} uses metrics the code does not export: {missing}"
        )


def test_dashboards_are_valid_grafana_json_with_queries() -> None:
    for path in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"):
        dash = json.loads(path.read_text())
        assert dash["uid"] and dash["title"] and dash["panels"]
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in dash["panels"]:
            assert panel["targets"], f"{path.name}: panel {panel['title']!r} has no query"

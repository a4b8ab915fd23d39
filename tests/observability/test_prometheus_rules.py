"""Alert rules are valid (promtool check) and fire exactly when they should (promtool test)."""

from __future__ import annotations

import shutil
import subprocess

from tests.observability.catalogue import ROOT

RULES = ROOT / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: `make test` installs Debian's prometheus package"
    return subprocess.run([exe, *args], cwd=RULES, capture_output=True, text=True, timeout=60)


def test_rules_pass_promtool_check() -> None:
    r = promtool("check", "rules", "alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_rules_unit_tests_pass() -> None:
    r = promtool("test", "rules", "alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_scrape_config_is_valid() -> None:
    r = promtool("check", "config", "--syntax-only", "prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr

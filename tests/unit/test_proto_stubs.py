"""The committed gRPC stubs are exactly what `make proto` generates from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_not_stale() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_proto_field_is_commented() -> None:
    for proto in (ROOT / "proto").rglob("*.proto"):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            text = line.strip()
            is_field = text.endswith(";") and "=" in text and not text.startswith(("//", "option"))
            if is_field and not text.startswith("syntax"):
                assert lines[i - 1].strip().startswith("//"), f"{proto.name}:{i + 1}: {text}"

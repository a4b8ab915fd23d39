"""Imports run one way: gateway -> contracts (engine.api, services.rag.client) <- engine, RAG.

The import-linter contracts in pyproject.toml say so and `make lint` checks them; these tests
run the same check under `make test`, and make sure a new implementation module cannot slip
past the contracts by not being listed in them.
"""

from __future__ import annotations

import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

import engine
import services.rag

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
    "contracts"
]
CONTRACT_MODULES = {"engine.api", "services.rag.client"}
# torch-free RAG parts the contract itself is made of
RAG_CONTRACT_PARTS = {"services.rag.documents", "services.rag.errors", "services.rag.results"}
RAG_CONTRACT_PARTS |= {"services.rag.model_files"}


def _implementation_modules() -> set[str]:
    found = set()
    for package in (engine, services.rag):
        for info in pkgutil.iter_modules(package.__path__, prefix=package.__name__ + "."):
            found.add(info.name)
    return found - CONTRACT_MODULES - RAG_CONTRACT_PARTS


def _forbidden(contract_id: str) -> set[str]:
    contract = next(c for c in CONTRACTS if c["id"] == contract_id)
    return set(contract["forbidden_modules"])


@pytest.mark.parametrize("contract_id", ["gateway-contracts-only", "contracts-standalone"])
def test_every_implementation_module_is_forbidden_to_the_contract_users(contract_id: str) -> None:
    missing = _implementation_modules() - _forbidden(contract_id)
    assert not missing, f"add {sorted(missing)} to {contract_id} in pyproject.toml"


def test_the_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "import-linter is part of the test extra"
    done = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout

"""Generate the Python stubs of every .proto under proto/ (what `make proto` runs).

Stubs land in the `tessera` package at the path of their proto package
(proto/tessera/engine/v1/engine.proto -> tessera/engine/v1/engine_pb2.py), so the
generated imports (`from tessera.engine.v1 import engine_pb2`) resolve as they are.
`--check` regenerates into a temporary tree and fails when the committed stubs differ.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
INIT_TEXT = '"""Generated protobuf package (see proto/); do not edit."""\n'


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Write stubs (and package __init__ files) under out_root; return the files written."""
    protos = proto_files()
    rel = [str(p.relative_to(PROTO_ROOT)) for p in protos]
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *rel,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written: list[Path] = []
    for r in rel:
        pkg_dir = out_root / Path(r).parent
        stem = Path(r).stem
        written += [pkg_dir / f"{stem}{s}" for s in SUFFIXES]
        # every generated directory below the `tessera` package needs an __init__
        d = pkg_dir
        while d != out_root / "tessera":
            init = d / "__init__.py"
            init.write_text(INIT_TEXT)
            written.append(init)
            d = d.parent
    return sorted(set(written))


def stale_files() -> list[str]:
    """Stub files whose committed content differs from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for f in fresh:
            rel = f.relative_to(tmp)
            committed = REPO_ROOT / rel
            if not committed.exists() or not filecmp.cmp(f, committed, shallow=False):
                stale.append(str(rel))
        return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when stubs are stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated stubs (run `make proto`):", *stale, sep="\n  ")
            return 1
        print("generated stubs are up to date")
        return 0
    for f in generate(REPO_ROOT):
        print(f.relative_to(REPO_ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())

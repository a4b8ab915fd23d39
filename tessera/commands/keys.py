"""`tessera keys new NAME`: a fresh API key, and the keys-file entry that stores only its hash."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="make API keys for the gateway's --keys-file")
    p.add_argument("action", choices=["new"], help="new: print a key and its keys-file entry")
    p.add_argument("name", help="a name for the key (shown in logs instead of the key)")
    p.add_argument("--rpm", type=int, help="requests per minute for this key")
    p.add_argument("--tpm", type=int, help="tokens per minute for this key")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gateway.auth import new_key

    key, entry = new_key(args.name)
    entry.update({k: v for k, v in (("rpm", args.rpm), ("tpm", args.tpm)) if v is not None})
    print(f"key (give it to the client; it is not stored): {key}", file=sys.stderr)
    print(json.dumps(entry))
    return 0

"""SIGKILL during ingest: a real `tessera rag` process is killed at random moments while a
client ingests; every restart must load (no corrupt index) and still hold every document
whose ingest was acknowledged."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tessera.http_server import free_port

# `tessera rag` through its own register/run, as tessera/cli.py wires every command.
LAUNCH = """
import argparse, logging, sys
from tessera.commands import rag
logging.basicConfig(level="WARNING")
parser = argparse.ArgumentParser()
rag.register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.run(args))
"""
ROUNDS = 4
HNSW_PAST = 30  # chunks; small, so kills also land around the switch to HNSW


def start_sidecar(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    flags = [
        "rag", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
        "--redis-url", "", "--compact-segments", "2", "--approximate-threshold", str(HNSW_PAST),
    ]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", LAUNCH, *flags], stdout=out, stderr=out, cwd=Path.cwd()
        )


async def wait_ready(http: httpx.AsyncClient, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"sidecar exited at start:\n{log.read_text()[-3000:]}"
        try:
            if (await http.get("/ready")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("sidecar never became ready")


async def ingest_until_killed(
    http: httpx.AsyncClient, proc: subprocess.Popen[bytes], round_no: int, acked: set[str]
) -> None:
    """Ingest batches of 3 documents; SIGKILL the process at a random moment."""
    kill_at = time.monotonic() + random.uniform(0.2, 2.0)
    batch = 0
    while True:
        docs = [
            {
                "id": f"r{round_no}-b{batch}-d{i}",
                "text": f"Round {round_no} batch {batch} document {i}. " * random.randint(5, 60),
                "metadata": {"round": round_no},
            }
            for i in range(3)
        ]
        request = asyncio.create_task(
            http.post("/v1/collections/kb/documents", json={"documents": docs})
        )
        while not request.done() and time.monotonic() < kill_at:
            await asyncio.sleep(0.002)
        if time.monotonic() >= kill_at:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            try:
                response = await request
            except httpx.TransportError:
                return
            if response.status_code == 200:  # answered just before the kill
                acked.update(d["id"] for d in docs)
            return
        response = request.result()
        assert response.status_code == 200, response.text
        acked.update(d["id"] for d in docs)
        batch += 1


async def assert_everything_acknowledged_is_there(
    http: httpx.AsyncClient, acked: set[str], data_dir: Path
) -> None:
    stats = (await http.get("/v1/collections/kb")).json()
    assert stats["documents"] >= len(acked)
    assert stats["documents"] <= len(acked) + 3  # at most the batch in flight at the kill
    for doc_id in sorted(acked):
        body = {"query": "document", "top_k": 1, "filters": {"document_id": doc_id}}
        hits = (await http.post("/v1/collections/kb/retrieve", json=body)).json()["data"]
        assert [h["document_id"] for h in hits] == [doc_id], f"acknowledged {doc_id} lost"
    manifest = json.loads((data_dir / "kb" / "MANIFEST").read_text())
    named = {"MANIFEST", *manifest["segments"]}
    if manifest["snapshot"]:
        named |= {manifest["snapshot"], manifest["snapshot"].replace(".rec", ".faiss")}
    assert {p.name for p in (data_dir / "kb").iterdir()} <= named  # crash leftovers removed


async def test_sigkill_during_ingest_loses_no_acknowledged_document(tmp_path: Path):
    random.seed(7)
    data_dir, log = tmp_path / "data", tmp_path / "sidecar.log"
    port = free_port()
    acked: set[str] = set()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        proc = start_sidecar(data_dir, port, log)
        try:
            await wait_ready(http, proc, log)
            assert (await http.post("/v1/collections", json={"name": "kb"})).status_code == 201
            seed = [{"id": f"seed{i}", "text": "Seed text. " * 100} for i in range(6)]
            await http.post("/v1/collections/kb/documents", json={"documents": seed})
            acked.update(d["id"] for d in seed)  # about 24 chunks: near the HNSW threshold
            for round_no in range(ROUNDS):
                await ingest_until_killed(http, proc, round_no, acked)
                proc = start_sidecar(data_dir, port, log)
                await wait_ready(http, proc, log)
                await assert_everything_acknowledged_is_there(http, acked, data_dir)
            stats = (await http.get("/v1/collections/kb")).json()
            assert stats["index_type"] == ("hnsw" if stats["chunks"] > HNSW_PAST else "flat")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0  # SIGTERM drains and exits cleanly
    assert len(acked) >= 3 * ROUNDS

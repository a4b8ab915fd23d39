"""A `tessera gateway` process, started as an operator starts it, loads no engine: no torch,
FAISS, ONNX Runtime or transformers, and no engine or RAG implementation module."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from tessera.http_server import free_port

HEAVY = ("torch", "faiss", "onnx", "onnxruntime", "transformers", "tokenizers", "safetensors")
CONTRACTS = ("engine.api", "services.rag.client")
# torch-free modules the contracts are made of, and the progress switch the CLI's logging sets
ALLOWED = {"engine", "services", "services.rag", "engine.progress"} | {
    f"services.rag.{name}" for name in ("documents", "errors", "results", "model_files")
}

# Runs `tessera gateway` in this process; once /health answers, a thread writes the loaded
# modules and the peak RSS, then sends SIGTERM, which the gateway answers by draining.
_RUNNER = textwrap.dedent(
    """
    import json, os, resource, signal, sys, threading, time, urllib.request
    port, out = int(sys.argv[1]), sys.argv[2]

    def report():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with open(out, "w") as f:
            json.dump({"modules": sorted(sys.modules), "max_rss_kib": rss_kib}, f)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=report, daemon=True).start()
    from tessera.cli import main
    sys.exit(main(["gateway", "--engines", "127.0.0.1:1", "--port", str(port),
                   "--grpc-port", "0", "--drain-timeout", "0"]))
    """
)


def test_gateway_process_loads_no_engine_and_no_heavy_library(tmp_path: Path) -> None:
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(free_port()), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    modules = set(report["modules"])
    assert not {m for m in modules if m.split(".")[0] in HEAVY}
    ours = {m for m in modules if m.split(".")[0] in ("engine", "services")}
    stray = {m for m in ours if not m.startswith(CONTRACTS)} - ALLOWED
    assert not stray, f"the gateway loaded engine/RAG implementation modules: {sorted(stray)}"
    assert report["max_rss_kib"] > 0

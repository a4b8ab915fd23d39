"""Start-up benchmark: cold and warm `tessera prepare`, `tessera serve` to ready, idle memory.

Runs in a fresh home directory (so nothing is cached: the model conversion, the kernel build
and the backend gates all run), then again warm, then starts `tessera serve` and reads its
resident memory once it is ready and idle. Writes a Markdown report to bench/results/:

    .venv/bin/python bench/startup.py [--out FILE] [serve flags...]
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe
from tessera.http_server import free_port

TESSERA = [sys.executable, "-m", "tessera.cli"]


def timed_prepare(env: dict[str, str], extra: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([*TESSERA, "prepare", *extra], env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def serve_until_ready(env: dict[str, str], extra: list[str]) -> tuple[float, int, int]:
    """Seconds from launch to /ready, then resident and peak memory (bytes) once idle."""
    port = free_port()
    args = ["serve", "--port", str(port), "--grpc-port", str(free_port()),
            "--rag-port", str(free_port()), *extra]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen([*TESSERA, *args], env=env, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tessera serve exited with {proc.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        ready = time.perf_counter() - t0
        time.sleep(3)  # idle
        status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
        kb = {ln.split(":")[0]: int(ln.split()[1]) for ln in status if ln.startswith("Vm")}
        return ready, kb["VmRSS"] * 1024, kb["VmHWM"] * 1024
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, help="report (default bench/results/startup-DATE.md)")
    args, extra = ap.parse_known_args()
    today = datetime.date.today().isoformat()
    out = args.out or Path(__file__).parent / "results" / f"startup-{today}.md"
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HOME": home}
        env.pop("TESSERA_CACHE_DIR", None)
        env.pop("TORCH_EXTENSIONS_DIR", None)
        cold = timed_prepare(env, extra)
        warm = timed_prepare(env, extra)
        ready, rss, peak = serve_until_ready(env, extra)
    command = "python bench/startup.py" + "".join(f" {a}" for a in extra)
    report = f"""# Start-up, {today}

Command: `{command}`
Machine: {describe()}

A fresh home directory: nothing cached (model conversion, kernel build, backend gates and
timings, RAG embedder all run in the cold `tessera prepare`).

| what | figure |
| --- | --- |
| `tessera prepare`, cold | {cold:.0f} s |
| `tessera prepare`, warm | {warm:.1f} s |
| `tessera serve` launch to `/ready`, after prepare | {ready:.1f} s |
| `tessera serve` resident memory, idle | {rss / 1e9:.2f} GB |
| `tessera serve` peak resident memory | {peak / 1e9:.2f} GB |
"""
    out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()

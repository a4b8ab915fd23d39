"""How much a `tessera gateway` process loads: seconds from exec to answering /health, peak
RSS, modules loaded, and whether torch came with it; for one or more checkouts, alternated.

    python bench/gateway_footprint.py --checkout before=/tmp/before-wt --checkout after=. \\
        --rounds 5 --out bench/results/gateway-footprint-DATE.md

Each checkout runs with its own code first on sys.path (the same virtualenv). Run it on a
quiet machine: these are timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import machine_info, write_report
from tessera.http_server import free_port

# Started with `python -c` in the checkout: the gateway runs in this process; once /health
# answers, a thread writes what was loaded and the peak RSS, then SIGTERM drains it.
RUNNER = """
import json, os, resource, signal, sys, threading, time, urllib.request
t0 = float(sys.argv[3])
port, out = int(sys.argv[1]), sys.argv[2]

def report():
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            break
        except OSError:
            time.sleep(0.01)
    ready = time.time() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mods = sorted(sys.modules)
    with open(out, "w") as f:
        json.dump({"ready_s": ready, "max_rss_kib": rss, "modules": mods}, f)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=report, daemon=True).start()
sys.path.insert(0, os.getcwd())
from tessera.cli import main
sys.exit(main(["gateway", "--engines", "127.0.0.1:1", "--port", str(port),
               "--grpc-port", str(port + 1), "--drain-timeout", "0"]))
"""


def run_once(checkout: Path) -> dict[str, float | int | bool]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report.json"
        port = free_port()
        done = subprocess.run(
            [sys.executable, "-c", RUNNER, str(port), str(out), repr(time.time())],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"{checkout}: gateway failed: {done.stderr[-2000:]}")
        r = json.loads(out.read_text())
    mods = r["modules"]
    return {
        "ready_s": r["ready_s"],
        "max_rss_mib": r["max_rss_kib"] / 1024,
        "modules": len(mods),
        "torch": "torch" in mods,
        "engine_modules": sum(1 for m in mods if m.startswith("engine.")),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkout", action="append", required=True, help="NAME=PATH")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    checkouts = dict(c.split("=", 1) for c in args.checkout)
    runs: dict[str, list[dict[str, float | int | bool]]] = {name: [] for name in checkouts}
    for _ in range(args.rounds):  # alternated, so drift hits every checkout alike
        for name, path in checkouts.items():
            runs[name].append(run_once(Path(path).resolve()))
    m = machine_info()
    lines = [
        "# `tessera gateway` footprint",
        "",
        f"Command: `python bench/gateway_footprint.py {' '.join(sys.argv[1:])}`",
        f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores; {args.rounds} alternated rounds, "
        "medians.",
        "",
        "| checkout | exec → /health (s) | peak RSS (MiB) | modules | engine.* modules | torch |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, rs in runs.items():
        med = {k: statistics.median(float(r[k]) for r in rs) for k in rs[0] if k != "torch"}
        lines.append(
            f"| {name} ({checkouts[name]}) | {med['ready_s']:.2f} | {med['max_rss_mib']:.0f} | "
            f"{med['modules']:.0f} | {med['engine_modules']:.0f} | "
            f"{'loaded' if rs[0]['torch'] else 'not loaded'} |"
        )
    write_report(lines, args.out)


if __name__ == "__main__":
    main()

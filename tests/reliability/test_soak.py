"""Load: a soak at concurrency 64 against the embedded stack (`tessera serve` process).
No errors except the deliberate 429s of a rate-limited key, resident memory flat between
the first and the last part of the run, every KV block free at the end. The short
version runs in `make test`; `make soak` runs the 60 s one."""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.gateway_fixtures import new_key
from tests.integration.processes import start_serve

MAIN_KEY, NOISY_KEY = new_key(), new_key()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    from gateway.auth import hash_key

    keys = tmp_path / "keys.json"
    keys.write_text(
        json.dumps(
            [
                {"name": "main", "sha256": hash_key(MAIN_KEY)},
                {"name": "noisy", "sha256": hash_key(NOISY_KEY), "rpm": 2},
            ]
        )
    )
    proc, port = start_serve("--keys-file", str(keys))
    try:
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(60)


async def soak(
    proc: subprocess.Popen[bytes], port: int, seconds: float, concurrency: int, warmup: float
) -> dict:
    """`warmup` seconds of the load, then `seconds` more with the server's RSS sampled."""
    base = f"http://127.0.0.1:{port}/v1"
    statuses: Counter[str] = Counter()
    rss: list[tuple[float, int]] = []
    t0 = time.monotonic() + warmup
    stop_at = t0 + seconds

    async def worker(i: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(i)
        while time.monotonic() < stop_at:
            key = NOISY_KEY if i == 0 else MAIN_KEY
            body = {
                "model": "dummy:tiny",
                "max_tokens": rng.randint(4, 48),
                "messages": [{"role": "user", "content": f"soak {i} {rng.random()}"}],
                "stream": rng.random() < 0.5,
                "temperature": rng.choice([0, 0.8]),
            }
            try:
                r = await http.post(
                    f"{base}/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {key}"},
                )
                statuses[("noisy " if i == 0 else "") + str(r.status_code)] += 1
                if body["stream"] and r.status_code == 200:
                    assert r.text.rstrip().endswith("data: [DONE]")
                    events = [ln[6:] for ln in r.text.splitlines() if ln.startswith("data: ")]
                    # Parsed: the random model may well say "error" in its content.
                    assert not any("error" in json.loads(e) for e in events[:-1])
            except httpx.HTTPError as e:
                statuses[type(e).__name__] += 1

    async def sample_memory() -> None:
        while time.monotonic() < stop_at:
            if time.monotonic() >= t0:
                rss.append((time.monotonic() - t0, rss_bytes(proc.pid)))
            await asyncio.sleep(0.5)

    limits = httpx.Limits(max_connections=concurrency + 8)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(sample_memory(), *(worker(i, http) for i in range(concurrency)))
        metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    return {"statuses": statuses, "rss": rss, "metrics": metrics}


def check(result: dict, seconds: float, max_growth: float) -> None:
    statuses = result["statuses"]
    served = statuses["200"]
    errors = {k: v for k, v in statuses.items() if k not in ("200", "noisy 200", "noisy 429")}
    assert served > 0 and not errors, statuses
    assert statuses["noisy 429"] > 0  # the deliberate 429s happened
    # After the warm-up (measured here: RSS climbs for about 20 s while the allocators
    # meet ever larger batch shapes, then stays within 1 %), a leak lifts the RSS between
    # the first window and the last. Medians, not peaks: a step's large buffers are mapped
    # and unmapped, so single samples swing by 10 %.
    window = min(10.0, seconds / 4)
    first = [b for t, b in result["rss"] if t <= window]
    last = [b for t, b in result["rss"] if t >= seconds - window]
    growth = statistics.median(last) / statistics.median(first) - 1
    assert growth < max_growth, f"resident memory grew {growth:.1%}"
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in result["metrics"].splitlines()
        if line.startswith("tessera_engine_") and " " in line and "{" not in line
    }
    assert values["tessera_engine_kv_cache_free_blocks"] == values["tessera_engine_kv_cache_blocks"]
    assert values["tessera_engine_requests_running"] == 0
    print(f"soak {seconds:.0f}s: {dict(statuses)}, rss growth {growth:+.1%}")


async def test_short_soak_at_concurrency_64(stack: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, port = stack
    # 12 s is still inside the warm-up drift (+3 to +10 % measured): this bound catches
    # gross leaks (100 KB a request is about +35 %: ~1,900 requests over ~560 MB here);
    # the 60 s soak (`make soak`, +1.3 % measured) holds the fine bound.
    result = await soak(proc, port, seconds=12.0, concurrency=64, warmup=12.0)
    check(result, 12.0, max_growth=0.25)


@pytest.mark.slow
async def test_soak_60s_at_concurrency_64(stack: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, port = stack
    check(await soak(proc, port, seconds=60.0, concurrency=64, warmup=20.0), 60.0, 0.10)

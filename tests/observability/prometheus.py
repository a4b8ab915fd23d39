"""A real Prometheus server for tests: scrapes the given targets every second and answers
instant queries through its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx

from tessera.http_server import free_port


class Prometheus:
    """One Prometheus process with its own config and data under ``tmp``; stop() ends it."""

    def __init__(self, tmp: Path, targets: dict[str, str]) -> None:
        exe = shutil.which("prometheus")
        assert exe, "prometheus is missing: `make test` installs Debian's prometheus package"
        self.port = free_port()
        jobs = [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()
        ]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": jobs,
        }
        (tmp / "prometheus.yml").write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            [
                exe,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    async def query(self, expr: str) -> list[dict]:
        async with httpx.AsyncClient() as http:
            r = await http.get(f"{self.url}/api/v1/query", params={"query": expr})
        body = r.json()
        assert body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

"""Structured logs as deployed (TESSERA_LOG_FORMAT=json, as the images and the chart set
it): one request through real gateway, engine and RAG processes is found in all three
processes' JSON log lines under the same request id."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from tessera.http_server import free_port
from tessera.log_format import JsonFormatter
from tessera.v1 import chat_pb2, common_pb2, service_pb2_grpc


def test_json_formatter_puts_extra_fields_beside_the_message() -> None:
    record = logging.LogRecord("gateway.rest", logging.INFO, __file__, 1, "chat %s", ("200",), None)
    record.request_id = "abc"
    line = json.loads(JsonFormatter("gateway").format(record))
    assert line["message"] == "chat 200" and line["level"] == "INFO"
    assert line["request_id"] == "abc" and line["service"] == "gateway"
    assert line["logger"] == "gateway.rest" and line["ts"].endswith("+00:00")


def test_log_format_refuses_unknown_formats_from_flag_and_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tessera.cli import main

    with pytest.raises(SystemExit) as flag:
        main(["--log-format", "xml", "keys", "new", "x"])
    monkeypatch.setenv("TESSERA_LOG_FORMAT", "xml")
    with pytest.raises(SystemExit) as env:
        main(["keys", "new", "x"])
    assert flag.value.code == env.value.code == 2
    assert capsys.readouterr().err.count("--log-format") >= 2


class LoggedProcess:
    """A `tessera` service process whose stderr (its log) goes to a file."""

    def __init__(self, log: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        env.update(TESSERA_LOG_FORMAT="json", TESSERA_LOG_LEVEL="INFO")
        self.log = log
        with log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tessera.cli", *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )

    def wait_ready(self, url: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"exited {self.proc.returncode}: {self.log.read_text()[-3000:]}"
                )
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{url} never ready: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # drains, then exits
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines (libraries that print progress bars write other lines)."""
        text = self.log.read_text(errors="replace")
        return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]


@pytest.fixture
def stack(tmp_path: Path):
    ports = {name: free_port() for name in ("engine", "metrics", "rag", "http", "grpc")}
    engine = LoggedProcess(
        tmp_path / "engine.log",
        "engine", "--model", "dummy:tiny", "--host", "127.0.0.1",
        "--port", str(ports["engine"]), "--metrics-port", str(ports["metrics"]),
        "--kv-cache-memory", "64MiB", "--max-model-len", "512", "--no-native-kernels",
    )  # fmt: skip
    rag = LoggedProcess(
        tmp_path / "rag.log",
        "rag", "--host", "127.0.0.1", "--port", str(ports["rag"]),
        "--data-dir", str(tmp_path / "rag"), "--redis-url", "",
    )  # fmt: skip
    gateway = LoggedProcess(
        tmp_path / "gateway.log",
        "gateway", "--host", "127.0.0.1", "--port", str(ports["http"]),
        "--grpc-port", str(ports["grpc"]), "--engines", f"127.0.0.1:{ports['engine']}",
        "--rag-url", f"http://127.0.0.1:{ports['rag']}", "--health-interval", "0.3",
    )  # fmt: skip
    procs = {"engine": engine, "rag": rag, "gateway": gateway}
    try:
        deadline = time.monotonic() + 300
        engine.wait_ready(f"http://127.0.0.1:{ports['metrics']}/ready", deadline)
        rag.wait_ready(f"http://127.0.0.1:{ports['rag']}/ready", deadline)
        gateway.wait_ready(f"http://127.0.0.1:{ports['http']}/ready", deadline)
        yield procs, ports
    finally:
        for p in procs.values():
            p.stop()


def test_gateway_engine_and_rag_log_one_request_under_the_gateways_request_id(stack) -> None:
    """REST with a client id, REST without one (the gateway makes it), and gRPC."""
    procs, ports = stack
    rag = f"http://127.0.0.1:{ports['rag']}"
    api = f"http://127.0.0.1:{ports['http']}"
    httpx.post(f"{rag}/v1/collections", json={"name": "docs"}, timeout=30).raise_for_status()
    doc = {"id": "bell-rock", "text": "The Bell Rock Lighthouse was built by Robert Stevenson."}
    httpx.post(
        f"{rag}/v1/collections/docs/documents", json={"documents": [doc]}, timeout=60
    ).raise_for_status()
    chat = {
        "model": "dummy:tiny",
        "max_tokens": 4,
        "rag": {"collection": "docs", "top_k": 2},
        "messages": [{"role": "user", "content": "Who built the Bell Rock Lighthouse?"}],
    }
    given = f"it-{uuid.uuid4().hex[:12]}"
    headers = {"X-Request-Id": given}
    r = httpx.post(f"{api}/v1/chat/completions", json=chat, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == given
    # without a client id the gateway makes one, and that one travels too
    r2 = httpx.post(f"{api}/v1/chat/completions", json={**chat, "stream": True}, timeout=60)
    assert r2.status_code == 200 and "[DONE]" in r2.text
    made = r2.headers["x-request-id"]
    # the public gRPC API takes the id from the x-request-id metadata
    over_grpc = f"grpc-{uuid.uuid4().hex[:12]}"
    with grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
        stub = service_pb2_grpc.TesseraStub(channel)
        req = chat_pb2.ChatCompletionRequest(
            model="dummy:tiny",
            messages=[chat_pb2.ChatMessage(role="user", content="hi")],
            sampling=common_pb2.SamplingOptions(max_tokens=3),
        )
        reply = stub.CreateChatCompletion(req, metadata=[("x-request-id", over_grpc)], timeout=60)
        assert reply.choices
    for p in procs.values():
        p.stop()  # flushes and closes the logs
    logs = {name: p.lines() for name, p in procs.items()}
    for rid in (given, made):
        (gw,) = [ln for ln in logs["gateway"] if ln.get("request_id") == rid]
        assert gw["service"] == "gateway" and gw["route"] == "chat" and gw["status"] == 200
        (eng,) = [ln for ln in logs["engine"] if ln.get("request_id") == rid]
        assert eng["message"] == "generate finished" and eng["completion_tokens"] > 0
        assert eng["engine_request_id"].startswith(rid)
        (ret,) = [ln for ln in logs["rag"] if ln.get("request_id") == rid]
        assert ret["path"] == "/v1/collections/docs/retrieve" and ret["status"] == 200
    (gw,) = [ln for ln in logs["gateway"] if ln.get("request_id") == over_grpc]
    assert gw["route"] == "grpc_chat" and gw["status"] == 200
    (eng,) = [ln for ln in logs["engine"] if ln.get("request_id") == over_grpc]
    assert eng["engine_request_id"].startswith(over_grpc)

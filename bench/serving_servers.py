"""Servers under test, each started as subprocesses on free loopback ports, waited on until
ready, and stopped after its sweep. Every server serves the same GGUF file: Tessera and
llama.cpp read it directly, `transformers serve` a Hugging Face folder converted from it.

Peers run from their own virtualenv (bench/setup_peers.sh), never from Tessera's .venv.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.serving_load import EosControl, Target

REPO = Path(__file__).resolve().parents[1]
PEERS_VENV = REPO / "bench" / ".venv-peers"
# Token texts that end generation in the chat models we serve (llama.cpp's "end of generation").
EOG_TEXTS = {"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end|>", "</s>"}


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""


@dataclass
class BenchPaths:
    """The model file and where launchers keep logs and converted models."""

    gguf: Path
    cache_dir: Path  # bench/.cache: converted Hugging Face folders
    log_dir: Path  # one log file per process
    peers_python: Path = PEERS_VENV / "bin" / "python"


def free_port() -> int:
    from tessera.http_server import free_port as tessera_free_port

    return tessera_free_port()


@dataclass
class Server(ABC):
    """One server kind: how to start it, how to know it is ready, how to ask it for tokens."""

    name: str
    paths: BenchPaths
    extra_args: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list, init=False)
    commands: list[list[str]] = field(default_factory=list, init=False)
    logs: list[Path] = field(default_factory=list, init=False)
    eos_control: EosControl = "none"
    # The most requests the sweep has in flight at once: llama-server gets one slot for each
    # (the other servers size their batches themselves).
    max_in_flight: int = 32

    @abstractmethod
    def launch(self) -> Target:
        """Start the processes and wait until the server answers; returns how to reach it."""

    def describe(self) -> dict[str, object]:
        """What was run, for the results file."""
        return {"commands": [" ".join(c) for c in self.commands], "eos_control": self.eos_control}

    def spawn(self, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.paths.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.paths.log_dir / f"{self.name}-{len(self.procs)}.log"
        with log.open("wb") as f:
            # A new session per server, so stop() can signal the whole process group.
            proc = subprocess.Popen(
                cmd,
                stdout=f,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.procs.append(proc)
        self.commands.append(cmd)
        self.logs.append(log)
        return proc

    def wait_http(self, url: str, timeout_s: float, ok: Callable[[httpx.Response], bool]) -> None:
        """Poll url until ok(response); fail early when a process exits."""
        t_end = time.monotonic() + timeout_s
        while time.monotonic() < t_end:
            for proc, log in zip(self.procs, self.logs, strict=True):
                if proc.poll() is not None:
                    raise ServerStartError(
                        f"{self.name}: exited with {proc.returncode}: {tail(log)}"
                    )
            try:
                if ok(httpx.get(url, timeout=2)):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise ServerStartError(
            f"{self.name}: not ready after {timeout_s:.0f}s: {tail(self.logs[-1])}"
        )

    def stop(self) -> None:
        """SIGTERM every process group (reverse start order), SIGKILL after 20 s."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def tail(log: Path, chars: int = 1500) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def served_model(base_url: str) -> str:
    """The first model id of GET /v1/models."""
    r = httpx.get(f"{base_url}/models", timeout=10)
    r.raise_for_status()
    return str(r.json()["data"][0]["id"])


def ready_200(r: httpx.Response) -> bool:
    return r.status_code == 200


# ---- Tessera ------------------------------------------------------------------------------
def tessera_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tessera.cli", *args]


@dataclass
class TesseraEmbedded(Server):
    """`tessera serve --no-rag`: gateway and engine in one process."""

    eos_control: EosControl = "ignore_eos"

    def launch(self) -> Target:
        port = free_port()
        self.spawn(
            tessera_cmd(
                "serve", "--no-rag", "--model", str(self.paths.gguf), "--host", "127.0.0.1",
                "--port", str(port), "--grpc-port", str(free_port()), *self.extra_args,
            )
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        self.wait_http(f"{base}/ready", 900, ready_200)
        return tessera_target(base)


@dataclass
class TesseraSplit(Server):
    """`tessera engine` and `tessera gateway --engines` as two processes (gRPC between)."""

    eos_control: EosControl = "ignore_eos"

    def launch(self) -> Target:
        grpc, metrics, port = free_port(), free_port(), free_port()
        self.spawn(
            tessera_cmd(
                "engine", "--model", str(self.paths.gguf), "--host", "127.0.0.1",
                "--port", str(grpc), "--metrics-port", str(metrics), *self.extra_args,
            )
        )  # fmt: skip
        self.wait_http(f"http://127.0.0.1:{metrics}/ready", 900, ready_200)
        self.spawn(
            tessera_cmd(
                "gateway", "--host", "127.0.0.1", "--port", str(port),
                "--grpc-port", str(free_port()), "--engines", f"127.0.0.1:{grpc}",
            )
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        self.wait_http(f"{base}/ready", 120, ready_200)
        return tessera_target(base)


def tessera_target(base: str) -> Target:
    # The response cache would replay greedy answers: every request asks to bypass it.
    return Target(
        base_url=f"{base}/v1",
        model=served_model(f"{base}/v1"),
        eos_control="ignore_eos",
        headers={"Cache-Control": "no-cache"},
    )


# ---- Hugging Face transformers -----------------------------------------------------------
@dataclass
class TransformersServe(Server):
    """`transformers serve --continuous-batching` over a Hugging Face folder made from the
    GGUF. It answers 422 to fields it does not know (ignore_eos, min_tokens), but maps
    OpenAI's logit_bias to a sequence bias, which keeps EOS from ending a reply early."""

    eos_control: EosControl = "logit_bias"

    def launch(self) -> Target:
        folder = hf_folder(self.paths)
        port = free_port()
        self.spawn(
            [
                str(self.paths.peers_python.parent / "transformers"), "serve", str(folder),
                "--continuous-batching", "--device", "cpu", "--host", "127.0.0.1",
                "--port", str(port), "--log-level", "warning", *self.extra_args,
            ],
            env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}/v1"
        self.wait_http(f"{base}/models", 900, ready_200)
        return Target(
            base_url=base,
            model=str(folder),
            eos_control=self.eos_control,
            eos_token_ids=eos_token_ids(self.paths.gguf),
        )


def hf_folder(paths: BenchPaths) -> Path:
    """The Hugging Face folder converted from the GGUF (made once, then cached)."""
    folder = paths.cache_dir / "hf" / f"{paths.gguf.stem}-{paths.gguf.stat().st_size}"
    if (folder / "config.json").is_file():
        return folder
    script = Path(__file__).with_name("convert_gguf_to_hf.py")
    paths.log_dir.mkdir(parents=True, exist_ok=True)
    log = paths.log_dir / "convert_gguf_to_hf.log"
    with log.open("wb") as f:
        rc = subprocess.call(
            [str(paths.peers_python), str(script), str(paths.gguf), str(folder)],
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    if rc != 0:
        raise ServerStartError(f"converting {paths.gguf.name} failed ({rc}): {tail(log)}")
    return folder


# ---- llama.cpp -----------------------------------------------------------------------------
@dataclass
class LlamaCppServer(Server):
    """llama.cpp's C++ `llama-server` on the GGUF itself (bench/setup_peers.sh builds it for
    this CPU into the peers venv's bin/).

    It gets one slot (-np) per request the sweep has in flight at once (max_in_flight), all
    decoded together in one continuous batch (-cb, on by default in this version, passed to
    say so). Given -np, its KV cache is split between the slots, not unified: -c is the
    total, slots x ctx_per_slot, so that every slot holds a whole multiturn session.
    EOS is banned with OpenAI's logit_bias like the other peers (llama-server would also take
    ignore_eos), so that --peer-eos governs every peer alike."""

    eos_control: EosControl = "logit_bias"
    ctx_per_slot: int = 2048
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    @property
    def binary(self) -> Path:
        return self.paths.peers_python.parent / "llama-server"

    def command(self, port: int) -> list[str]:
        """The llama-server command line (flags of llama.cpp as vendored by
        llama-cpp-python 0.3.36; extra_args come last, so they win)."""
        slots = max(1, self.max_in_flight)
        return [
            str(self.binary), "-m", str(self.paths.gguf), "--alias", self.paths.gguf.stem,
            "-np", str(slots), "-cb", "-c", str(slots * self.ctx_per_slot),
            "-t", str(self.threads), "--host", "127.0.0.1", "--port", str(port),
            *self.extra_args,
        ]  # fmt: skip

    def launch(self) -> Target:
        if not self.binary.is_file():
            raise ServerStartError(f"{self.binary} is missing: run bash bench/setup_peers.sh")
        port = free_port()
        self.spawn(self.command(port))
        base = f"http://127.0.0.1:{port}"
        # /health answers 503 while the model loads, 200 once the slots are ready.
        self.wait_http(f"{base}/health", 300, ready_200)
        return Target(
            base_url=f"{base}/v1",
            model=self.paths.gguf.stem,
            eos_control=self.eos_control,
            eos_token_ids=eos_token_ids(self.paths.gguf),
        )

    def describe(self) -> dict[str, object]:
        out = super().describe()
        try:
            res = subprocess.run(
                [str(self.binary), "--version"], capture_output=True, text=True, timeout=30
            )
            out["version"] = " ".join((res.stdout + res.stderr).split())
        except (OSError, subprocess.TimeoutExpired):
            pass
        return out


def eos_token_ids(gguf_path: Path) -> tuple[int, ...]:
    """The GGUF's EOS id and every token whose text ends generation (ChatML's <|im_end|>...)."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    ids = set()
    eos = reader.fields.get("tokenizer.ggml.eos_token_id")
    if eos is not None:
        ids.add(int(eos.contents()))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    ids.update(i for i, t in enumerate(tokens) if t in EOG_TEXTS)
    return tuple(sorted(ids))


SERVERS: dict[str, type[Server]] = {
    "tessera-embedded": TesseraEmbedded,
    "tessera-split": TesseraSplit,
    "transformers": TransformersServe,
    "llama.cpp": LlamaCppServer,
}

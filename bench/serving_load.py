"""The load generator: workloads (chat sessions), arrival schedules, and an asyncio client
that streams OpenAI chat completions and times every chunk.

A workload is a list of sessions; a session is one conversation whose user turns are sent
one after the other, each with the replies so far. A fixed synthetic chat is a session of
one turn; the multi-turn workload shares one long system prompt across all sessions, which
is where prefix caching and prefix-affinity routing pay off.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from bench.serving_stats import RequestResult

# 32 topics, shared with bench/engine_throughput.py so the figures compare
# (about 55 prompt tokens with SmolLM2's chat template and its default system prompt).
TOPICS = [
    "the history of the printing press", "how bees communicate", "the water cycle",
    "why leaves change color in autumn", "the rules of chess", "how a bicycle stays upright",
    "the life of Marie Curie", "how vaccines work", "the invention of the telephone",
    "why the ocean is salty", "how airplanes fly", "the Great Wall of China",
    "how computers store numbers", "the causes of earthquakes", "the phases of the moon",
    "how bread rises", "the migration of monarch butterflies", "how a rainbow forms",
    "the Roman aqueducts", "how solar panels make electricity", "the origin of the Olympics",
    "why cats purr", "how glaciers move", "the discovery of penicillin", "how volcanoes erupt",
    "the structure of DNA", "how the heart pumps blood", "the first moon landing",
    "how coral reefs grow", "the invention of paper money", "how tides work",
    "the life cycle of a star",
]  # fmt: skip

# A support-desk style system prompt (about 250 tokens) shared by every multi-turn session.
SHARED_SYSTEM_PROMPT = (
    "You are Atlas, the science tutor of an online learning platform for high-school "
    "students. Follow these rules in every answer. Explain ideas step by step, starting "
    "from what a fifteen-year-old already knows. Prefer short paragraphs and plain words; "
    "define every technical term the first time you use it. Give at least one concrete, "
    "everyday example, and when numbers help, use round numbers that are easy to check. "
    "Never invent sources, dates or quotations; if you are not sure of a fact, say so and "
    "explain how the student could check it. Do not give answers to graded homework "
    "directly: guide the student with questions and hints instead. Keep a friendly, "
    "encouraging tone, but do not use emojis. When the student asks a follow-up question, "
    "connect it to what you said before rather than starting over. If a question is unsafe "
    "(for example about dangerous chemistry experiments), explain why it is unsafe and "
    "suggest a safe alternative. End each answer with one short question that checks the "
    "student understood the main idea. The platform serves students in many countries, so "
    "use metric units first and give imperial units in brackets when they are common. "
    "Answers are shown on phones, so avoid tables and long lists."
)
FOLLOW_UPS = [
    "Can you give me another example of that from everyday life?",
    "What is the most common misunderstanding about this?",
    "Summarize your explanation in two sentences.",
]


@dataclass(frozen=True)
class Session:
    """One conversation: an optional system prompt and the user turns, sent in order."""

    user_turns: tuple[str, ...]
    system: str | None = None


def fixed_chats(n: int, salt: int = 0) -> list[Session]:
    """n single-turn chats over TOPICS; request i starts with a distinct tag (salt + i) so
    that no two requests of a run share their whole prompt (only the chat template's own
    system prompt), and repeated points cannot hit a prefix or response cache."""
    return [
        Session(
            user_turns=(
                f"Q{salt + i}. Please explain {TOPICS[i % len(TOPICS)]} to a curious "
                "high-school student, in a few clear paragraphs with one concrete example.",
            )
        )
        for i in range(n)
    ]


def shared_prefix_chats(n: int, turns: int = 3, salt: int = 0) -> list[Session]:
    """n multi-turn conversations that all share SHARED_SYSTEM_PROMPT (tagged once per point
    with salt, so every session of a point shares it but points do not)."""
    system = f"Session group {salt}. {SHARED_SYSTEM_PROMPT}"
    out = []
    for i in range(n):
        first = f"Please explain {TOPICS[(salt + i) % len(TOPICS)]}."
        follow = [FOLLOW_UPS[(i + t) % len(FOLLOW_UPS)] for t in range(turns - 1)]
        out.append(Session(user_turns=(first, *follow), system=system))
    return out


def poisson_arrivals(rate: float, n: int, seed: int = 0) -> list[float]:
    """Start offsets (seconds) of n arrivals of a Poisson process of `rate` per second."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    rng = random.Random(seed)
    t = 0.0
    out = []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out


EosControl = Literal["ignore_eos", "logit_bias", "none"]


@dataclass(frozen=True)
class Target:
    """A running OpenAI-compatible server and how to ask it for exactly max_tokens tokens."""

    base_url: str  # http://host:port/v1
    model: str
    # ignore_eos: vLLM-style `ignore_eos` + `min_tokens`; logit_bias: ban the EOS ids with
    # OpenAI's logit_bias; none: plain OpenAI fields (the reply may end early).
    eos_control: EosControl = "none"
    eos_token_ids: tuple[int, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)

    def request_body(self, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.eos_control == "ignore_eos":
            body.update(ignore_eos=True, min_tokens=max_tokens)
        elif self.eos_control == "logit_bias" and self.eos_token_ids:
            body["logit_bias"] = {str(t): -100.0 for t in self.eos_token_ids}
        return body


async def stream_chat(
    client: httpx.AsyncClient, target: Target, messages: list[dict[str, str]], max_tokens: int
) -> RequestResult:
    """Send one streaming chat completion and time its chunks; never raises for server errors."""
    body = target.request_body(messages, max_tokens)
    start = time.perf_counter()
    res = RequestResult(ok=False, start=start)
    parts: list[str] = []
    last: float | None = None
    try:
        async with client.stream(
            "POST", f"{target.base_url}/chat/completions", json=body, headers=target.headers
        ) as resp:
            if resp.status_code != 200:
                detail = (await resp.aread()).decode(errors="replace")[:300]
                res.error = f"HTTP {resp.status_code}: {detail}"
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    res.error = f"stream error: {str(chunk['error'])[:300]}"
                    return res
                usage = chunk.get("usage")
                if usage:
                    res.usage_completion_tokens = usage.get("completion_tokens")
                    res.usage_prompt_tokens = usage.get("prompt_tokens")
                text = _chunk_text(chunk)
                if text:
                    now = time.perf_counter() - start
                    if last is None:
                        res.ttft = now
                    else:
                        res.chunk_gaps.append(now - last)
                    last = now
                    res.text_chunks += 1
                    parts.append(text)
    except (httpx.HTTPError, json.JSONDecodeError, OSError) as e:
        res.error = f"{type(e).__name__}: {str(e)[:200]}"
        return res
    res.e2e = time.perf_counter() - start
    res.text = "".join(parts)
    res.ok = res.ttft is not None
    if not res.ok:
        res.error = "stream ended without text"
    return res


def _chunk_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    delta = choices[0].get("delta") or {}
    return str(delta.get("content") or delta.get("reasoning_content") or "")


async def run_session(
    client: httpx.AsyncClient, target: Target, session: Session, max_tokens: int
) -> list[RequestResult]:
    """Send a session's turns in order, each carrying the replies so far; stop at an error."""
    messages: list[dict[str, str]] = []
    if session.system is not None:
        messages.append({"role": "system", "content": session.system})
    out = []
    for turn in session.user_turns:
        messages.append({"role": "user", "content": turn})
        r = await stream_chat(client, target, list(messages), max_tokens)
        out.append(r)
        if not r.ok:
            break
        messages.append({"role": "assistant", "content": r.text})
    return out


async def run_point(
    target: Target,
    sessions: Sequence[Session],
    max_tokens: int,
    concurrency: int | None = None,
    arrivals: Sequence[float] | None = None,
    timeout_s: float = 600.0,
    max_duration_s: float | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[list[RequestResult], float]:
    """Run sessions closed-loop (`concurrency` at a time) or open-loop (session i starts at
    arrivals[i], at most `concurrency` in flight if given); returns results and wall time.
    With max_duration_s, sessions not yet started by then are skipped. `transport` replaces
    the network (tests)."""
    if concurrency is None and arrivals is None:
        raise ValueError("give a concurrency, arrivals, or both")
    limit = concurrency or len(sessions) or 1
    limits = httpx.Limits(max_connections=limit + 4, max_keepalive_connections=limit + 4)
    results: list[RequestResult] = []
    t0 = time.perf_counter()

    def expired() -> bool:
        return max_duration_s is not None and time.perf_counter() - t0 > max_duration_s

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, transport=transport) as client:
        sem = asyncio.Semaphore(limit)

        async def one(i: int, session: Session) -> None:
            if arrivals is not None:
                await asyncio.sleep(max(0.0, t0 + arrivals[i] - time.perf_counter()))
            async with sem:
                if not expired():
                    results.extend(await run_session(client, target, session, max_tokens))

        await asyncio.gather(*(one(i, s) for i, s in enumerate(sessions)))
    return results, time.perf_counter() - t0

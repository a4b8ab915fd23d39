"""Routing policies behind one interface: round robin, least outstanding, prefix affinity."""

from __future__ import annotations

import enum
import hashlib
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.api import EngineClient, EngineInfo


@dataclass(eq=False)
class Endpoint:
    """One engine as the gateway sees it."""

    name: str
    client: EngineClient
    healthy: bool = False
    outstanding: int = 0
    """Requests this gateway has in flight on the engine."""
    info: EngineInfo | None = None
    consecutive_failures: int = 0
    served: int = field(default=0)


class RoutingPolicy(ABC):
    """Chooses an engine for a request among healthy candidates."""

    @abstractmethod
    def choose(self, candidates: Sequence[Endpoint], key: str | None) -> Endpoint:
        """Pick one of ``candidates`` (never empty); ``key`` is the request's affinity key."""


class RoundRobin(RoutingPolicy):
    def __init__(self) -> None:
        self._counter = itertools.count()

    def choose(self, candidates: Sequence[Endpoint], key: str | None) -> Endpoint:
        ordered = sorted(candidates, key=lambda e: e.name)
        return ordered[next(self._counter) % len(ordered)]


class LeastOutstanding(RoutingPolicy):
    """Fewest in-flight requests, then the engine's own reported queue, then name."""

    def choose(self, candidates: Sequence[Endpoint], key: str | None) -> Endpoint:
        def load(e: Endpoint) -> tuple[int, int, str]:
            waiting = e.info.load.num_waiting if e.info else 0
            return (e.outstanding, waiting, e.name)

        return min(candidates, key=load)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class PrefixAffinity(RoutingPolicy):
    """Consistent hashing with bounded loads on the prompt's leading text.

    Requests that share their leading text (a system prompt and first user turn:
    every turn of one conversation) land on the engine that already holds those
    KV blocks, and every gateway replica agrees without shared state. An engine
    is skipped while its load exceeds ``load_factor`` times the average (plus
    one), so one hot prefix cannot pile onto one engine (Mirrokni et al., 2018).
    """

    VNODES = 64

    def __init__(self, load_factor: float = 1.25) -> None:
        self.load_factor = load_factor

    def _ring(self, candidates: Sequence[Endpoint]) -> list[tuple[int, Endpoint]]:
        return sorted(
            ((_hash(f"{e.name}#{v}"), e) for e in candidates for v in range(self.VNODES)),
            key=lambda p: p[0],
        )

    def choose(self, candidates: Sequence[Endpoint], key: str | None) -> Endpoint:
        if key is None or len(candidates) == 1:
            return LeastOutstanding().choose(candidates, key)
        total = sum(e.outstanding for e in candidates) + 1
        bound = math.ceil(self.load_factor * total / len(candidates))
        ring = self._ring(candidates)
        h = _hash(key)
        start = next((i for i, (p, _) in enumerate(ring) if p >= h), 0)
        for i in range(len(ring)):
            endpoint = ring[(start + i) % len(ring)][1]
            if endpoint.outstanding < bound:
                return endpoint
        return ring[start][1]


class RoutingPolicyName(str, enum.Enum):
    ROUND_ROBIN = "round_robin"
    LEAST_OUTSTANDING = "least_outstanding"
    PREFIX_AFFINITY = "prefix_affinity"


POLICIES: dict[RoutingPolicyName, type[RoutingPolicy]] = {
    RoutingPolicyName.ROUND_ROBIN: RoundRobin,
    RoutingPolicyName.LEAST_OUTSTANDING: LeastOutstanding,
    RoutingPolicyName.PREFIX_AFFINITY: PrefixAffinity,
}


def create_policy(name: str) -> RoutingPolicy:
    return POLICIES[RoutingPolicyName(name)]()


AFFINITY_CHARS = 2048
"""Leading characters of the conversation root that form the affinity key."""


def affinity_key(messages: Sequence[dict[str, str]] | None, prompt: str | None) -> str | None:
    """The conversation's root: messages up to and including the first user turn."""
    if messages:
        root: list[str] = []
        for m in messages:
            root.append(f"{m.get('role')}:{m.get('content')}")
            if m.get("role") == "user":
                break
        return "\n".join(root)[:AFFINITY_CHARS]
    if prompt:
        return prompt[:AFFINITY_CHARS]
    return None

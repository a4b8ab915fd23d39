"""Small factories for scheduler and KV cache tests: no model, no GPU."""

from __future__ import annotations

import itertools

from engine.api import SamplingParams
from engine.config import SchedulerConfig
from engine.kv_cache import KVCacheManager
from engine.scheduler import (
    RunnerOutput,
    SampledToken,
    Scheduler,
    SchedulerOutput,
    SchedulingPolicy,
)
from engine.sequence import Sequence

_ids = itertools.count()
EOS = 0


def make_seq(
    num_prompt_tokens: int = 20,
    *,
    max_tokens: int = 8,
    prompt: list[int] | None = None,
    priority: int = 0,
    request_id: str | None = None,
    index: int = 0,
    start_token: int = 100,
) -> Sequence:
    """A sequence with distinct prompt tokens (so no accidental prefix sharing)."""
    sid = next(_ids)
    tokens = prompt or [start_token + sid * 1000 + i for i in range(num_prompt_tokens)]
    return Sequence(
        sid,
        request_id or f"r{sid}",
        list(tokens),
        SamplingParams(max_tokens=max_tokens, temperature=0.0),
        index=index,
        priority=priority,
        eos_token_ids=(EOS,),
        max_total_tokens=4096,
    )


def make_scheduler(
    num_blocks: int = 64,
    block_size: int = 4,
    *,
    max_num_seqs: int = 8,
    max_num_batched_tokens: int = 64,
    max_waiting: int = 100,
    policy: SchedulingPolicy = SchedulingPolicy.FCFS,
    prefix_caching: bool = True,
) -> Scheduler:
    config = SchedulerConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        max_waiting=max_waiting,
        policy=policy.value,
    )
    return Scheduler(config, KVCacheManager(num_blocks, block_size, prefix_caching))


def fake_runner_output(out: SchedulerOutput, token: int = 7) -> RunnerOutput:
    """What a runner returns: one token for each sequence whose chunk reaches its end."""
    return RunnerOutput(
        sampled=[SampledToken(s.seq.seq_id, token) for s in out.scheduled if s.samples]
    )


def run_step(sched: Scheduler, token: int = 7) -> SchedulerOutput:
    out = sched.schedule()
    sched.update(out, fake_runner_output(out, token))
    return out


def run_to_completion(sched: Scheduler, max_steps: int = 1000) -> int:
    steps = 0
    while sched.num_unfinished and steps < max_steps:
        run_step(sched)
        steps += 1
    return steps

"""Scheduler: budgets, chunked prefill, preemption, refusal, abort and block accounting."""

from __future__ import annotations

import pytest

from engine.api import FinishReason, QueueFullError
from engine.scheduler import SchedulingPolicy
from engine.sequence import SequenceStatus
from tests.unit.engine.factories import (
    fake_runner_output,
    make_scheduler,
    make_seq,
    run_step,
    run_to_completion,
)


def test_every_block_is_free_after_any_workload_finishes() -> None:
    sched = make_scheduler(num_blocks=40, block_size=4, max_num_batched_tokens=16)
    seqs = [make_seq(n, max_tokens=m) for n, m in [(3, 5), (17, 9), (30, 2), (8, 12), (1, 1)]]
    for s in seqs:
        sched.add([s])
    run_to_completion(sched)
    assert all(s.is_finished for s in seqs)
    assert [s.num_output_tokens for s in seqs] == [5, 9, 2, 12, 1]
    assert sched.kv.num_free_blocks == 40


def test_token_budget_caps_each_step_and_decodes_go_first() -> None:
    sched = make_scheduler(max_num_batched_tokens=10)
    a = make_seq(4, max_tokens=5)
    sched.add([a])
    run_step(sched)  # a's prefill
    b = make_seq(30)
    sched.add([b])
    out = sched.schedule()
    assert out.scheduled[0].seq is a and out.scheduled[0].num_new_tokens == 1
    assert out.scheduled[1].seq is b and out.scheduled[1].num_new_tokens == 9
    assert out.num_batched_tokens == 10


def test_chunked_prefill_feeds_a_long_prompt_over_several_steps() -> None:
    sched = make_scheduler(max_num_batched_tokens=8)
    seq = make_seq(20, max_tokens=1)
    sched.add([seq])
    chunks = []
    while not seq.is_finished:
        out = run_step(sched)
        chunks.append([(s.start, s.num_new_tokens, s.samples) for s in out.scheduled])
    assert chunks == [[(0, 8, False)], [(8, 8, False)], [(16, 4, True)]]
    assert seq.num_output_tokens == 1


def test_long_prefill_threshold_caps_one_chunk() -> None:
    sched = make_scheduler(max_num_batched_tokens=64)
    sched.config = sched.config.model_copy(update={"long_prefill_token_threshold": 5})
    sched.add([make_seq(12)])
    assert sched.schedule().scheduled[0].num_new_tokens == 5


def test_max_num_seqs_caps_running_sequences() -> None:
    sched = make_scheduler(max_num_seqs=2)
    for _ in range(4):
        sched.add([make_seq(4)])
    out = sched.schedule()
    assert len(out.scheduled) == 2 and len(sched.waiting) == 2


def test_waiting_queue_refuses_beyond_its_limit_at_once() -> None:
    sched = make_scheduler(max_waiting=3)
    sched.add([make_seq(), make_seq()])
    with pytest.raises(QueueFullError):
        sched.add([make_seq(), make_seq()])  # a request's sequences are all or nothing
    sched.add([make_seq()])
    assert len(sched.waiting) == 3


def test_abort_frees_all_blocks_at_once() -> None:
    sched = make_scheduler(num_blocks=20)
    a, b = make_seq(10, max_tokens=50), make_seq(10, max_tokens=50)
    sched.add([a])
    sched.add([b])
    for _ in range(3):
        run_step(sched)
    assert sched.kv.num_free_blocks < 20
    sched.abort([a, b])
    assert sched.kv.num_free_blocks == 20
    assert a.finish_reason is FinishReason.ABORT and not sched.running


def test_preemption_by_recompute_when_blocks_run_out_then_resume() -> None:
    # 6 blocks of 4 tokens: two sequences of 8 prompt tokens growing by 8 cannot both fit.
    sched = make_scheduler(num_blocks=6, block_size=4, prefix_caching=False)
    a, b = make_seq(8, max_tokens=8), make_seq(8, max_tokens=8)
    sched.add([a])
    sched.add([b])
    preempted = []
    while sched.num_unfinished:
        out = run_step(sched)
        preempted += out.preempted
    assert preempted and preempted[0] is b  # FCFS: the later arrival gives way
    assert b.num_preemptions >= 1
    assert a.num_output_tokens == 8 and b.num_output_tokens == 8
    assert sched.kv.num_free_blocks == 6


def test_preempted_sequence_recomputes_prompt_and_output_tokens() -> None:
    sched = make_scheduler(num_blocks=6, block_size=4, prefix_caching=False)
    a, b = make_seq(8, max_tokens=8), make_seq(8, max_tokens=8)
    sched.add([a])
    sched.add([b])
    while not b.num_preemptions:
        run_step(sched)
    assert b.status is SequenceStatus.PREEMPTED and b.num_computed_tokens == 0
    produced = b.num_output_tokens
    while b.status is not SequenceStatus.RUNNING or b.num_computed_tokens == 0:
        out = run_step(sched)
        resumed = [s for s in out.scheduled if s.seq is b]
        if resumed:
            # The resume chunk re-feeds prompt and every token generated before.
            assert resumed[0].start == 0
            assert resumed[0].num_new_tokens == 8 + produced
            break


def test_priority_policy_admits_lower_values_first() -> None:
    sched = make_scheduler(max_num_seqs=1, policy=SchedulingPolicy.PRIORITY)
    low, high = make_seq(4, priority=5), make_seq(4, priority=0)
    sched.add([low])
    sched.add([high])
    assert sched.schedule().scheduled[0].seq is high


def test_fcfs_ignores_priority() -> None:
    sched = make_scheduler(max_num_seqs=1)
    first, second = make_seq(4, priority=5), make_seq(4, priority=0)
    sched.add([first])
    sched.add([second])
    assert sched.schedule().scheduled[0].seq is first


def test_n_sequences_share_prompt_blocks_in_the_same_step() -> None:
    sched = make_scheduler(num_blocks=32, block_size=4)
    prompt = list(range(1, 18))  # 17 tokens: 4 full blocks
    seqs = [make_seq(prompt=prompt, request_id="r", index=i) for i in range(3)]
    sched.add(seqs)
    out = sched.schedule()
    assert [s.num_new_tokens for s in out.scheduled] == [17, 1, 1]
    tables = [s.block_ids for s in out.scheduled]
    assert tables[0][:4] == tables[1][:4] == tables[2][:4]
    sched.update(out, fake_runner_output(out))
    assert sched.kv.num_free_blocks == 32 - 4 - 3


def test_eos_finishes_unless_ignore_eos_or_below_min_tokens() -> None:
    sched = make_scheduler()
    a = make_seq(4, max_tokens=10)
    sched.add([a])
    run_step(sched, token=0)
    assert a.finish_reason is FinishReason.STOP and a.num_output_tokens == 1
    b = make_seq(4, max_tokens=3)
    b.params.ignore_eos = True
    sched.add([b])
    run_to_completion(sched)
    assert b.finish_reason is FinishReason.LENGTH and b.num_output_tokens == 3

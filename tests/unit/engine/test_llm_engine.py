"""The engine end to end on a tiny random-weight model: fast, CPU only, exact."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.api import (
    FinishReason,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    SamplingParams,
)
from engine.async_engine import AsyncEngine
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.model_source import ModelBundle, load_model

PROMPTS = [
    "The quick brown fox",
    "Once upon a time in a land far away there lived",
    "def fibonacci(n):",
    "Paris is the capital of",
    "1, 2, 3, 4,",
    "Tessera serves models on a laptop and on clusters alike.",
]


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return load_model("dummy:tiny", seed=3)


def engine_for(
    bundle: ModelBundle,
    kv: str = "64MiB",
    backend: dict[str, str | bool] | None = None,
    **sched: int | str,
) -> LLMEngine:
    config = EngineConfig(
        model={"max_model_len": 512},
        cache={"kv_cache_memory": kv, "block_size": 4},
        scheduler={"max_num_batched_tokens": 64, **sched},
        backend=backend or {},
    )
    return LLMEngine(config, bundle=bundle)


GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


def tokens(results: list) -> list[list[int]]:
    return [r.completions[0].token_ids for r in results]


def test_preemption_and_resume_give_the_same_tokens(tiny: ModelBundle) -> None:
    params = SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)
    roomy = engine_for(tiny)
    expected = tokens(roomy.generate(PROMPTS, params))
    # A pool of 520 token slots: one full-context sequence fits, six growing ones do not.
    kv_bytes = tiny.config.kv_bytes_per_token(4) * 520
    tight = engine_for(tiny, kv=str(kv_bytes), max_num_seqs=6)
    got = tokens(tight.generate(PROMPTS, params))
    assert tight.scheduler.num_preemptions > 0
    assert got == expected
    assert tight.kv.num_free_blocks == tight.kv.num_blocks


def test_batched_greedy_equals_each_prompt_alone(tiny: ModelBundle) -> None:
    engine = engine_for(tiny)
    together = tokens(engine.generate(PROMPTS, GREEDY))
    alone = [tokens(engine.generate([p], GREEDY))[0] for p in PROMPTS]
    assert together == alone


def test_prefix_cache_hit_reuses_blocks_and_keeps_output(tiny: ModelBundle) -> None:
    engine = engine_for(tiny)
    long_prompt = " ".join(PROMPTS)
    (first,) = engine.generate([long_prompt], GREEDY)
    (second,) = engine.generate([long_prompt], GREEDY)
    assert first.num_cached_tokens == 0
    assert second.num_cached_tokens >= len(first.prompt_token_ids) - 4
    assert second.completions[0].token_ids == first.completions[0].token_ids


def test_same_seed_same_output_whatever_else_is_in_the_batch(tiny: ModelBundle) -> None:
    engine = engine_for(tiny)
    seeded = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=1234)
    (alone,) = engine.generate([PROMPTS[0]], seeded)
    others = [SamplingParams(max_tokens=16, temperature=0.8, seed=i) for i in range(5)]
    batch = engine.generate([PROMPTS[0], *PROMPTS[1:]], [seeded, *others])
    assert batch[0].completions[0].token_ids == alone.completions[0].token_ids
    (other_seed,) = engine.generate(
        [PROMPTS[0]], SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=99)
    )
    assert other_seed.completions[0].token_ids != alone.completions[0].token_ids


def test_n_completions_share_the_prompt_and_sample_independently(tiny: ModelBundle) -> None:
    engine = engine_for(tiny)
    (res,) = engine.generate([PROMPTS[1]], SamplingParams(n=3, max_tokens=12, seed=7))
    outs = [c.token_ids for c in res.completions]
    assert [c.index for c in res.completions] == [0, 1, 2]
    assert all(len(o) == 12 for o in outs)
    assert len({tuple(o) for o in outs}) == 3
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_stop_string_ends_generation_and_is_never_emitted(tiny: ModelBundle) -> None:
    engine = engine_for(tiny)
    (free,) = engine.generate([PROMPTS[2]], GREEDY)
    text = free.completions[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert len(stop.strip()) > 0
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, stop=[stop])
    (stopped,) = engine.generate([PROMPTS[2]], params)
    c = stopped.completions[0]
    assert c.finish_reason is FinishReason.STOP and c.stop_reason == stop
    assert c.text == text[: text.index(stop)]


def test_stop_string_finish_frees_every_completions_blocks_in_its_step(
    tiny: ModelBundle,
) -> None:
    engine = engine_for(tiny)
    (free,) = engine.generate([PROMPTS[2]], GREEDY)
    text = free.completions[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    params = SamplingParams(n=2, max_tokens=24, temperature=0.0, ignore_eos=True, stop=[stop])
    engine.add_request(PROMPTS[2], params, request_id="stopped")
    final = None
    while final is None:
        final = next((out for out in engine.step() if out.finished), None)
    # The step that found the stop string finished both sequences and freed their blocks.
    assert not engine.has_unfinished()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    assert [(d.finish_reason, d.stop_reason) for d in final.deltas] == [
        (FinishReason.STOP, stop)
    ] * 2


def test_stop_token_id_and_min_tokens(tiny: ModelBundle) -> None:
    engine = engine_for(tiny)
    (free,) = engine.generate([PROMPTS[3]], GREEDY)
    stop_id = free.completions[0].token_ids[3]
    first = free.completions[0].token_ids.index(stop_id)
    params = SamplingParams(max_tokens=24, temperature=0.0, stop_token_ids=[stop_id])
    (stopped,) = engine.generate([PROMPTS[3]], params)
    c = stopped.completions[0]
    assert c.token_ids == free.completions[0].token_ids[: first + 1]
    assert c.finish_reason is FinishReason.STOP and c.stop_reason == stop_id
    params.min_tokens = first + 2
    (late,) = engine.generate([PROMPTS[3]], params)
    assert stop_id not in late.completions[0].token_ids[: first + 2]


def test_logprobs_come_with_each_token(tiny: ModelBundle) -> None:
    engine = engine_for(tiny)
    params = SamplingParams(max_tokens=5, temperature=0.0, logprobs=3, ignore_eos=True)
    (res,) = engine.generate([PROMPTS[0]], params)
    c = res.completions[0]
    assert len(c.logprobs) == 5
    for token, lp in zip(c.token_ids, c.logprobs, strict=True):
        assert len(lp.top) == 3 and lp.top[0][0] == token  # greedy: the best is chosen
        assert lp.logprob == pytest.approx(lp.top[0][1])


def test_bad_requests_are_refused_with_clear_errors(tiny: ModelBundle) -> None:
    engine = engine_for(tiny, max_waiting=2)
    with pytest.raises(PromptTooLongError, match="context length is 512"):
        engine.add_request([5] * 600)
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        engine.add_request([10**7])
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.add_request("")
    engine.add_request("a", request_id="x")
    with pytest.raises(InvalidRequestError, match="already in flight"):
        engine.add_request("b", request_id="x")
    engine.add_request("c")
    with pytest.raises(QueueFullError):
        engine.add_request("d")
    engine.abort("x")
    while engine.has_unfinished():
        engine.step()
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_max_tokens_and_context_length_finish_with_length(tiny: ModelBundle) -> None:
    engine = engine_for(tiny)
    (res,) = engine.generate([[7] * 500], SamplingParams(max_tokens=100, ignore_eos=True))
    assert res.completions[0].finish_reason is FinishReason.LENGTH
    assert len(res.completions[0].token_ids) == 12  # 500 prompt + 12 = max_model_len 512


async def test_async_streams_match_sync_and_cancel_frees_blocks(tiny: ModelBundle) -> None:
    engine = engine_for(tiny)
    expected = tokens(engine.generate(PROMPTS, GREEDY))
    aengine = AsyncEngine(engine)
    try:

        async def collect(prompt: str) -> list[int]:
            got: list[int] = []
            async for out in aengine.generate(prompt, GREEDY):
                got += out.deltas[0].token_ids if out.deltas else []
            return got

        assert await asyncio.gather(*(collect(p) for p in PROMPTS)) == expected

        long = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)

        async def cancel_midway(prompt: str) -> None:
            n = 0
            async for _ in aengine.generate(prompt, long):
                n += 1
                if n == 3:
                    return  # leaving the stream aborts the request

        await asyncio.gather(*(cancel_midway(p) for p in PROMPTS * 3))
        free = await aengine.call(lambda e: (e.kv.num_free_blocks, e.kv.num_blocks))
        assert free[0] == free[1]
        assert not await aengine.call(lambda e: e.has_unfinished())
    finally:
        aengine.shutdown()


def test_deadline_passed_aborts_and_frees_blocks(tiny: ModelBundle) -> None:
    engine = engine_for(tiny)
    long = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
    deadline = time.monotonic() + 0.2
    engine.add_request(PROMPTS[0], long, request_id="late", deadline=deadline)
    engine.add_request(PROMPTS[1], GREEDY, request_id="free")
    finals = {out.request_id: out for out in engine.step() if out.finished}
    # The tiny model can finish 400 tokens before the deadline: let it pass mid-request.
    time.sleep(max(0.0, deadline - time.monotonic()) + 0.05)
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out
    assert finals["late"].deltas[0].finish_reason is FinishReason.ABORT
    assert finals["free"].deltas[0].finish_reason is FinishReason.LENGTH
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_bfloat16_on_cpu_generates_like_float32_mostly(tiny: ModelBundle) -> None:
    bf16 = engine_for(tiny, backend={"dtype": "bfloat16"})
    assert bf16.capacity.dtype == "bfloat16"
    got = tokens(bf16.generate(PROMPTS, GREEDY))
    assert all(len(t) == GREEDY.max_tokens for t in got)
    # Reduced precision may flip near-ties, but the first token rarely moves.
    expected = tokens(engine_for(tiny).generate(PROMPTS, GREEDY))
    assert sum(a[0] == b[0] for a, b in zip(got, expected, strict=True)) >= len(PROMPTS) - 1
    assert bf16.kv.num_free_blocks == bf16.kv.num_blocks


def test_bfloat16_weights_keep_float32_activations(tiny: ModelBundle) -> None:
    engine = engine_for(tiny, backend={"weight_dtype": "bfloat16"})
    assert engine.capacity.dtype == "float32" and engine.capacity.weight_dtype == "bfloat16"
    got = tokens(engine.generate(PROMPTS, GREEDY))
    expected = tokens(engine_for(tiny).generate(PROMPTS, GREEDY))
    assert sum(a[0] == b[0] for a, b in zip(got, expected, strict=True)) >= len(PROMPTS) - 1
    bad = EngineConfig(backend={"weight_dtype": "bfloat16", "dtype": "bfloat16"})
    with pytest.raises(ValueError, match="float32 activations"):
        LLMEngine(bad, bundle=tiny)


def test_native_kernels_off_uses_sdpa_and_gives_the_same_tokens(tiny: ModelBundle) -> None:
    plain = engine_for(tiny, backend={"native_kernels": False})
    assert plain.backend.native_decode is None
    assert tokens(plain.generate(PROMPTS, GREEDY)) == tokens(
        engine_for(tiny).generate(PROMPTS, GREEDY)
    )

"""The measured crossover (--speculative-disable-by-batch-size auto): speculation runs at a
batch size while its steps make tokens faster than plain ones, pauses where they do not, and
keeps measuring both; through the whole engine, verification that costs more than it yields
turns speculation off, and outputs stay those of speculation off either way."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch

from engine.api import SamplingParams
from engine.backends import BatchInputs
from engine.config import EngineConfig, SpeculativeConfig
from engine.llm_engine import LLMEngine
from engine.model_source import ModelBundle, load_model
from engine.spec_decode.speculator import PaybackGate
from tests.unit.engine.spec_decode.test_speculative_engine import PROMPTS


def run_gate(gate: PaybackGate, steps: int, spec_seconds: float, tokens_if_guessed: int) -> int:
    """Steps at batch 1 with plain steps of 1 s a token; returns how many speculated."""
    spoke = 0
    for _ in range(steps):
        if gate.allows(1):
            spoke += 1
            gate.record(1, True, tokens_if_guessed, spec_seconds)
        else:
            gate.record(1, False, 1, 1.0)
    return spoke


def test_speculates_where_it_pays_and_probes_plain_steps() -> None:
    gate = PaybackGate(probe_every=8)
    spoke = run_gate(gate, 64, spec_seconds=1.5, tokens_if_guessed=3)  # 0.5 s a token
    assert gate.pays(1) is True
    assert 64 - 64 // 8 - 2 <= spoke < 64  # plain only once in 8 steps, to keep measuring


def test_pauses_where_it_does_not_pay_and_probes_again() -> None:
    gate = PaybackGate(probe_every=8)
    spoke = run_gate(gate, 64, spec_seconds=2.0, tokens_if_guessed=1)  # 2 s a token
    assert gate.pays(1) is False
    assert 0 < spoke <= 64 // 8 + 1  # the first try, then one probe in 8


def test_follows_a_change_of_workload() -> None:
    gate = PaybackGate(probe_every=4)
    run_gate(gate, 40, spec_seconds=2.0, tokens_if_guessed=1)
    assert gate.pays(1) is False
    run_gate(gate, 80, spec_seconds=1.2, tokens_if_guessed=4)  # now guesses are right
    assert gate.pays(1) is True


def test_batch_sizes_are_measured_apart() -> None:
    gate = PaybackGate(probe_every=8)
    for _ in range(16):
        for batch, spec_seconds in ((1, 1.0), (8, 40.0)):  # pays at 1, not at 8
            if gate.allows(batch):
                gate.record(batch, True, 2 * batch, spec_seconds)
            else:
                gate.record(batch, False, batch, 1.0 * batch)
    assert (gate.pays(1), gate.pays(8)) == (True, False)


def test_auto_is_the_default_and_limits_still_parse() -> None:
    assert SpeculativeConfig().disable_by_batch_size == "auto"
    assert SpeculativeConfig(disable_by_batch_size="3").disable_by_batch_size == 3
    for bad in ("sometimes", -1):
        with pytest.raises(ValueError):
            SpeculativeConfig(disable_by_batch_size=bad)
    assert "measured to pay" in SpeculativeConfig(method="ngram").summary()


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return load_model("dummy:tiny", seed=3)


def auto_engine(bundle: ModelBundle, method: str) -> LLMEngine:
    return LLMEngine(
        EngineConfig(
            model={"max_model_len": 512},
            cache={"kv_cache_memory": "64MiB", "block_size": 4},
            backend={"name": "torch", "quantization": "int8"},
            speculative={"method": method},
        ),
        bundle=bundle,
    )


def slowed(engine: LLMEngine, seconds_per_guess_row: float) -> None:
    """Make every step of one sequence cost 5 ms plus ``seconds_per_guess_row`` per row
    beyond its first (its guesses): the tiny model's own step time is too small and noisy
    to decide on."""
    forward: Callable[[BatchInputs], torch.Tensor] = engine.runner.backend.forward

    def timed(inputs: BatchInputs) -> torch.Tensor:
        rows = len(inputs.token_ids)
        decode_only = rows == len(inputs.query_start_loc) - 1  # one-token entries
        time.sleep(0.005 + (seconds_per_guess_row * (rows - 1) if decode_only else 0.0))
        return forward(inputs)

    engine.runner.backend.forward = timed  # type: ignore[method-assign]


@pytest.mark.parametrize(("guess_row_seconds", "pays"), [(0.0, True), (0.05, False)])
def test_engine_turns_speculation_off_where_verification_costs_more(
    tiny: ModelBundle, guess_row_seconds: float, pays: bool
) -> None:
    greedy = SamplingParams(max_tokens=80, temperature=0.0, ignore_eos=True)
    prompt = [PROMPTS[4]]  # counting: the tiny model's output repeats often enough to guess
    expected = [r.completions[0].token_ids for r in auto_engine(tiny, "off").generate(
        prompt, greedy)]  # fmt: skip
    engine = auto_engine(tiny, "ngram")
    slowed(engine, guess_row_seconds)
    results = engine.generate(prompt, greedy)
    assert [r.completions[0].token_ids for r in results] == expected
    gate = engine.speculator.gate if engine.speculator else None
    assert gate is not None and gate.pays(1) is pays
    spec = engine.stats().spec
    assert spec is not None and spec.drafts > 0
    if not pays:  # paused after the first costly checks: probes only
        assert spec.drafts <= 2 + 80 // gate.probe_every

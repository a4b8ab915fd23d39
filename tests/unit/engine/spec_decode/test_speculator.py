"""How many guessed tokens a step checks: the step-cost curve, the learnt acceptance chances,
and the choice between them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from engine import backend_choice
from engine.api import SamplingParams
from engine.backends import BatchInputs
from engine.config import SpeculativeConfig
from engine.sequence import Sequence
from engine.spec_decode.speculator import Acceptance, Speculator, best_guess_length
from engine.spec_decode.step_cost import StepCosts, measure_step_costs
from tests.unit.engine.spec_decode.fakes import FixedGuess


def test_step_costs_are_monotone_and_extend_the_last_slope() -> None:
    costs = StepCosts([1.0, 1.3, 1.2, 1.8])  # a noisy third point
    assert costs.ratios == [1.0, 1.3, 1.3, 1.8]
    assert costs(1) == 1.0 and costs(3) == 1.3
    assert costs(6) == pytest.approx(1.8 + 2 * 0.5)
    assert costs.per_row == pytest.approx(0.8 / 3)
    assert StepCosts.linear(0.25, 3).ratios == [1.0, 1.25, 1.5]
    with pytest.raises(ValueError):
        StepCosts([1.2, 1.5])


class DriftingBackend:
    """A step of r rows takes r seconds of a clock that runs slower with every step (a shared
    machine slowing down while the curve is measured)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.steps = 0

    def forward(self, inputs: BatchInputs) -> None:
        self.steps += 1
        self.now += len(inputs.positions) * (1.0 + 0.02 * self.steps)

    def clock(self) -> float:
        return self.now


def test_step_costs_are_measured_in_rounds_so_drift_does_not_bend_the_curve(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = DriftingBackend()
    monkeypatch.setattr(backend_choice, "time", SimpleNamespace(perf_counter=backend.clock))
    costs = measure_step_costs(backend, 9, 16, 512)  # type: ignore[arg-type]
    # Every row count timed once a round: 9 rows cost 9 one-row steps within the drift of one
    # round (timed one row count after another, 7 steps each, it read 19.5).
    assert costs.ratios[-1] == pytest.approx(9.0, rel=0.15)
    assert costs.ratios == sorted(costs.ratios)


def test_best_length_weighs_the_chance_of_each_position_against_its_cost() -> None:
    # Each guessed position kept 90 % of the time: at no cost every position pays.
    sure = np.full(6, 0.9)
    assert best_guess_length(sure, StepCosts.linear(0.0, 7), rows=1) == 6
    # At 0.3 of a step a row, (1 + .9 + .81 + ...) / (1 + .3k) is 1.46, 1.69, 1.81, 1.86,
    # 1.874 and 1.863 for k = 1..6: the sixth position no longer pays.
    assert best_guess_length(sure, StepCosts.linear(0.3, 7), rows=1) == 5
    # A 20 % first guess is worth 0.2 tokens for 0.3 of a step: no guess.
    assert best_guess_length(np.full(4, 0.2), StepCosts.linear(0.3, 5), rows=1) == 0
    # In a step already feeding 8 rows, the same extra row is a smaller share of its cost.
    flat_then_steep = StepCosts([1.0, 1.05, 1.1, 1.15, 3.0])
    assert best_guess_length(np.full(4, 0.5), flat_then_steep, rows=1) == 3


def test_acceptance_learns_per_repeat_length_and_per_request() -> None:
    acc = Acceptance(max_repeat=5, positions=4)
    assert acc.chances(seq_id=1, repeat=3, k=4).tolist() == [0.5] * 4  # nothing seen yet
    for _ in range(20):
        acc.record(seq_id=1, repeat=3, guessed=4, accepted=4)
    engine_wide = acc.chances(seq_id=2, repeat=3, k=4)  # another request: the engine's record
    assert (engine_wide > 0.9).all()
    assert acc.chances(seq_id=2, repeat=2, k=2).tolist() == [0.5, 0.5]  # other repeat lengths
    # A request whose own guesses fail is judged mostly by its own record.
    for _ in range(20):
        acc.record(seq_id=3, repeat=3, guessed=2, accepted=0)
    own = acc.chances(seq_id=3, repeat=3, k=4)
    assert own[0] < 0.3 and own[0] < engine_wide[0]
    acc.forget(3)
    assert acc.chances(seq_id=3, repeat=3, k=1)[0] == pytest.approx(
        acc.chances(seq_id=2, repeat=3, k=1)[0]
    )


def test_a_requests_misses_after_a_lone_token_do_not_stop_its_copying() -> None:
    acc = Acceptance(max_repeat=5, positions=4)
    for _ in range(10):
        acc.record(seq_id=1, repeat=4, guessed=4, accepted=4)  # copying: kept
        acc.record(seq_id=1, repeat=1, guessed=2, accepted=0)  # after a lone token: missed
    assert (acc.chances(seq_id=1, repeat=4, k=4) > 0.9).all()
    assert acc.chances(seq_id=1, repeat=1, k=1)[0] < 0.1
    # A repeat of 2 or more is judged by the request's copying record, whatever its length.
    assert acc.chances(seq_id=1, repeat=2, k=1)[0] > 0.6


def test_positions_beyond_the_first_miss_are_not_counted() -> None:
    acc = Acceptance(max_repeat=2, positions=4)
    acc.record(seq_id=1, repeat=2, guessed=4, accepted=1)  # kept, missed, (unreached) x2
    assert acc.kept[2].tolist() == [2, 1, 1, 1]
    assert acc.tried[2].tolist() == [3, 3, 2, 2]


def _sequence(seq_id: int) -> Sequence:
    return Sequence(seq_id, f"r{seq_id}", [1, 2, 3], SamplingParams(max_tokens=100),
                    max_total_tokens=512)  # fmt: skip


def test_speculator_guesses_further_for_requests_whose_guesses_are_kept() -> None:
    config = SpeculativeConfig(method="ngram", num_speculative_tokens=6)
    spec = Speculator(config, FixedGuess(list(range(10, 16)), repeat=3), StepCosts.linear(0.25, 7))
    copying, chatting = _sequence(1), _sequence(2)
    first = spec.guess(copying, budget=64, rows=1)
    assert 0 < len(first) < 6  # an even chance a position: a short guess first
    for _ in range(10):
        guess = spec.guess(copying, budget=64, rows=1)
        spec.verified(copying, len(guess), len(guess))  # all kept
        guess = spec.guess(chatting, budget=64, rows=1)
        if guess:
            spec.verified(chatting, len(guess), 0)  # none kept
    assert spec.guess(copying, budget=64, rows=1) == list(range(10, 16))
    assert spec.guess(chatting, budget=64, rows=1) == []
    assert spec.guess(copying, budget=3, rows=1) == [10, 11]  # the step's token budget
    spec.finished(chatting, learn=True)
    assert 2 not in spec.acceptance._own

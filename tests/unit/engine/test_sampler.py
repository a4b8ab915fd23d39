"""Sampler: seeded determinism, greedy, masks, penalties, suppression, logprobs."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import pytest
import torch

from engine.api import SamplingParams
from engine.sampler import Sampler, SamplingBatch, apply_penalties, argmax_rows


def make_batch(
    params: list[SamplingParams],
    generators: Sequence[torch.Generator | None] | None = None,
    prompt: Sequence[Sequence[int]] | None = None,
    output: Sequence[Sequence[int]] | None = None,
    suppressed: Sequence[Sequence[int]] | None = None,
) -> SamplingBatch:
    """A SamplingBatch with empty histories and default generators unless given."""
    empty: list[Sequence[int]] = [[] for _ in params]
    return SamplingBatch(
        params=params,
        generators=list(generators) if generators is not None else [None] * len(params),
        prompt_token_ids=list(prompt) if prompt is not None else empty,
        output_token_ids=list(output) if output is not None else empty,
        suppressed_token_ids=list(suppressed) if suppressed is not None else empty,
    )


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def repeated(logits: Sequence[float], rows: int) -> torch.Tensor:
    """The same logits row `rows` times: [rows, vocab]."""
    return torch.tensor(logits, dtype=torch.float32).expand(rows, -1).contiguous()


def probs_as_logits(probs: Sequence[float]) -> list[float]:
    return [math.log(p) for p in probs]


@pytest.fixture
def sampler() -> Sampler:
    """A sampler whose default (unseeded-row) generator is fixed, for repeatable tests."""
    return Sampler(default_generator=seeded(0))


@pytest.mark.parametrize(
    "target",
    [
        SamplingParams(temperature=0.9, seed=1234),
        SamplingParams(top_k=40, top_p=0.9, seed=1234),
        SamplingParams(top_p=0.8, min_p=0.05, seed=1234),
    ],
    ids=["temperature", "top-k-top-p", "top-p-min-p"],
)
def test_same_seed_same_token_whatever_the_batch(target: SamplingParams) -> None:
    vocab, steps = 2000, 6
    logits = torch.randn(8, vocab, generator=seeded(7))

    alone_gen = seeded(1234)
    alone = [
        Sampler().sample(logits[3:4], make_batch([target], [alone_gen])).token_ids[0]
        for _ in range(steps)
    ]

    # Row 3 shares the batch with greedy, top-k/top-p/min-p, seeded and unseeded rows,
    # which changes how wide the candidate set of its group is.
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(top_k=20, seed=1),
        SamplingParams(top_p=0.5),
        target,
        SamplingParams(min_p=0.2, seed=99),
        SamplingParams(temperature=1.5),
        SamplingParams(top_k=5, top_p=0.7, seed=1234 + 1),
        SamplingParams(presence_penalty=1.0),
    ]
    gens = [None, seeded(1), None, seeded(1234), seeded(99), None, seeded(1235), None]
    batch = make_batch(params, gens, output=[[1, 2, 3]] * 8)
    in_batch = [Sampler().sample(logits, batch).token_ids[3] for _ in range(steps)]
    assert in_batch == alone


def test_different_seeds_draw_different_tokens() -> None:
    logits = torch.zeros(1, 1000)  # uniform: any difference comes from the seed
    params = [SamplingParams(seed=1)]
    draws = {}
    for seed in (1, 2):
        gen = seeded(seed)
        draws[seed] = [
            Sampler().sample(logits, make_batch(params, [gen])).token_ids[0] for _ in range(5)
        ]
    assert draws[1] != draws[2]
    assert len(set(draws[1])) > 1  # the generator advances between steps


def test_greedy_rows_take_the_argmax(sampler: Sampler) -> None:
    logits = torch.randn(6, 300, generator=seeded(3))
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0),
        SamplingParams(top_k=1, temperature=2.0),
        SamplingParams(temperature=0.0, top_p=0.1),
        SamplingParams(temperature=1e-7),
        SamplingParams(temperature=0.5, top_k=3),
    ]
    out = sampler.sample(logits, make_batch(params)).token_ids
    expected = logits.argmax(dim=-1).tolist()
    assert [out[i] for i in (0, 2, 3, 4)] == [expected[i] for i in (0, 2, 3, 4)]
    assert out[5] in logits[5].topk(3).indices.tolist()


def test_samples_follow_the_distribution(sampler: Sampler) -> None:
    rows = 3000
    logits = repeated(probs_as_logits([0.5, 0.3, 0.2]), rows)
    counts = Counter(sampler.sample(logits, make_batch([SamplingParams()] * rows)).token_ids)
    assert abs(counts[0] / rows - 0.5) < 0.04
    assert abs(counts[1] / rows - 0.3) < 0.04
    assert abs(counts[2] / rows - 0.2) < 0.04


def test_top_k_samples_stay_in_the_top_k(sampler: Sampler) -> None:
    rows = 400
    logits = repeated(torch.linspace(0.0, 1.0, 50).tolist(), rows)  # nearly flat
    out = sampler.sample(logits, make_batch([SamplingParams(top_k=5)] * rows)).token_ids
    assert set(out) == {45, 46, 47, 48, 49}


def test_top_p_never_samples_outside_the_nucleus(sampler: Sampler) -> None:
    rows = 400
    logits = repeated(probs_as_logits([0.5, 0.3, 0.1, 0.05, 0.05]), rows)
    # Mass before token 1 is 0.5 < 0.75 (kept); before token 2 it is 0.8 (dropped).
    out = sampler.sample(logits, make_batch([SamplingParams(top_p=0.75)] * rows)).token_ids
    assert set(out) == {0, 1}


def test_top_k_renormalizes_the_kept_tokens(sampler: Sampler) -> None:
    rows = 3000
    logits = repeated(probs_as_logits([0.4, 0.3, 0.2, 0.1]), rows)
    counts = Counter(sampler.sample(logits, make_batch([SamplingParams(top_k=2)] * rows)).token_ids)
    assert set(counts) == {0, 1}
    assert abs(counts[0] / rows - 4 / 7) < 0.04


def test_top_p_nucleus_wider_than_the_probe_is_exact(sampler: Sampler) -> None:
    rows, vocab = 400, 3000
    # Nearly flat and strictly increasing: the 0.9 nucleus is ~2700 tokens, so the
    # sampler must fall back from its 1024-token probe to a full sort.
    logits = repeated(torch.linspace(0.0, 0.01, vocab).tolist(), rows)
    probs, ids = logits[0].softmax(dim=-1).sort(descending=True)
    nucleus = set(ids[(probs.cumsum(dim=-1) - probs) < 0.9].tolist())
    out = sampler.sample(logits, make_batch([SamplingParams(top_p=0.9)] * rows)).token_ids
    assert set(out) <= nucleus
    assert min(out) < vocab - 1024  # tokens beyond the probe do get sampled


def test_min_p_drops_tokens_below_the_scaled_best(sampler: Sampler) -> None:
    rows = 400
    logits = repeated(probs_as_logits([0.5, 0.3, 0.1, 0.05, 0.05]), rows)
    # Threshold 0.15 * 0.5 = 0.075: tokens 3 and 4 (0.05) go, token 2 (0.1) stays.
    out = sampler.sample(logits, make_batch([SamplingParams(min_p=0.15)] * rows)).token_ids
    assert set(out) == {0, 1, 2}


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, 0.0]])
    params = [SamplingParams(repetition_penalty=2.0)]
    apply_penalties(logits, make_batch(params, prompt=[[0]], output=[[1, 3, 3]]))
    # Token 0 (prompt) and tokens 1, 3 (output) are penalized; 2 and 4 were never seen.
    assert logits.tolist() == [[1.0, -2.0, 0.5, 1.5, 0.0]]


def test_frequency_penalty_scales_with_output_count_only() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, 0.0]])
    params = [SamplingParams(frequency_penalty=0.5)]
    apply_penalties(logits, make_batch(params, prompt=[[0, 2]], output=[[1, 3, 3]]))
    assert logits.tolist() == [[2.0, -1.5, 0.5, 2.0, 0.0]]


def test_presence_penalty_is_subtracted_once_per_generated_token() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, 0.0]])
    params = [SamplingParams(presence_penalty=0.25)]
    apply_penalties(logits, make_batch(params, prompt=[[0, 2]], output=[[1, 3, 3]]))
    assert logits.tolist() == [[2.0, -1.25, 0.5, 2.75, 0.0]]


def test_penalties_combine_and_leave_other_rows_alone() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, 0.0], [2.0, -1.0, 0.5, 3.0, 0.0]])
    params = [
        SamplingParams(repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25),
        SamplingParams(),
    ]
    batch = make_batch(params, prompt=[[0], [0]], output=[[1, 3, 3], [1, 3, 3]])
    apply_penalties(logits, batch)
    # Repetition first (vLLM order), then frequency, then presence.
    assert logits[0].tolist() == [1.0, -2.75, 0.5, 0.25, 0.0]
    assert logits[1].tolist() == [2.0, -1.0, 0.5, 3.0, 0.0]


def test_penalty_moves_the_greedy_choice(sampler: Sampler) -> None:
    logits = torch.tensor([[3.0, 2.5, 0.0]])
    params = [SamplingParams(temperature=0.0, frequency_penalty=1.0)]
    out = sampler.sample(logits, make_batch(params, output=[[0]]))
    assert out.token_ids == [1]
    assert logits.tolist() == [[3.0, 2.5, 0.0]]  # the caller's logits are not modified


def test_suppressed_tokens_are_never_chosen(sampler: Sampler) -> None:
    rows = 300
    logits = repeated(probs_as_logits([0.6, 0.2, 0.1, 0.1]), rows)
    params = [SamplingParams(temperature=0.0)] + [SamplingParams()] * (rows - 1)
    out = sampler.sample(logits, make_batch(params, suppressed=[[0, 2]] * rows)).token_ids
    assert out[0] == 1
    assert set(out) == {1, 3}


def test_all_tokens_masked_keeps_a_valid_token(sampler: Sampler) -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0]] * 3)
    params = [SamplingParams(temperature=0.0), SamplingParams(), SamplingParams(top_p=0.1)]
    out = sampler.sample(logits, make_batch(params, suppressed=[[0, 1, 2]] * 3)).token_ids
    assert all(0 <= token < 3 for token in out)

    all_neg_inf = torch.full((1, 4), -math.inf)
    out = sampler.sample(all_neg_inf, make_batch([SamplingParams(min_p=0.5)])).token_ids
    assert 0 <= out[0] < 4


def test_logprobs_come_from_raw_logits_and_top_n_is_sorted(sampler: Sampler) -> None:
    logits = torch.randn(4, 40, generator=seeded(11))
    params = [
        SamplingParams(temperature=0.0, logprobs=3),
        SamplingParams(temperature=0.7, presence_penalty=2.0, logprobs=5),
        SamplingParams(temperature=0.0),
        SamplingParams(logprobs=0),
    ]
    out = sampler.sample(logits, make_batch(params, output=[[0, 1, 2]] * 4))
    raw = logits.log_softmax(dim=-1)
    for row, n in ((0, 3), (1, 5), (3, 0)):
        chosen = out.logprobs[row]
        assert chosen == pytest.approx(raw[row, out.token_ids[row]].item(), abs=1e-6)
        top = out.top_logprobs[row]
        assert top is not None and len(top) == n
        values, ids = raw[row].topk(n) if n else (torch.empty(0), torch.empty(0))
        assert [token for token, _ in top] == ids.tolist()
        assert [lp for _, lp in top] == pytest.approx(values.tolist(), abs=1e-6)
        assert [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
    assert out.logprobs[2] is None and out.top_logprobs[2] is None


def test_argmax_rows_matches_torch_on_ties_and_nan() -> None:
    logits = torch.randn(4, 1000)
    logits[1, [3, 7]] = 100.0  # a tie: the first wins
    logits[2, [10, 20]] = float("nan")  # NaN counts as the maximum, the first one
    logits = logits[:, :999]  # a non-contiguous view, as a sliced batch can be
    assert torch.equal(argmax_rows(logits), logits.argmax(dim=-1))
    assert argmax_rows(logits).tolist()[1:3] == [3, 10]

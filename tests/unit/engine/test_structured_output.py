"""Structured outputs and logit_bias in the engine, on a random-weight model: whatever the
model would say, a constrained output parses and validates, because every token is masked."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import torch

from engine.api import InvalidRequestError, SamplingParams, StructuredOutputs
from engine.async_engine import AsyncEngine
from engine.llm_engine import LLMEngine
from engine.model_source import ModelBundle, load_model
from engine.structured_output import GrammarManager, fill_bitmask
from tests.unit.engine.test_llm_engine import PROMPTS, engine_for, tokens

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return load_model("dummy:tiny", seed=3)


@pytest.fixture(scope="module")
def engine(tiny: ModelBundle) -> LLMEngine:
    return engine_for(tiny)


def _valid(doc: object) -> bool:
    if not isinstance(doc, dict) or set(doc) != {"name", "age", "tags"}:
        return False
    return (
        isinstance(doc["name"], str)
        and len(doc["name"]) <= 12
        and isinstance(doc["age"], int)
        and 0 <= doc["age"] <= 150
        and all(t in ("a", "b", "c") for t in doc["tags"])
        and len(doc["tags"]) <= 3
    )


def test_json_schema_outputs_always_parse_and_validate(engine: LLMEngine) -> None:
    spec = StructuredOutputs.json_schema(SCHEMA)
    params = [
        SamplingParams(max_tokens=120, temperature=1.0, seed=s, n=2, structured_outputs=spec)
        for s in range(len(PROMPTS))
    ]
    results = engine.generate(PROMPTS, params)
    texts = [c.text for r in results for c in r.completions]
    assert len(texts) == 2 * len(PROMPTS)
    for r in results:
        for c in r.completions:
            assert c.finish_reason is not None and c.finish_reason.value == "stop", c.text
    assert all(_valid(json.loads(t)) for t in texts), texts
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


@pytest.mark.parametrize(
    ("spec", "check"),
    [
        (
            StructuredOutputs(choice=("red", "green", "blue")),
            lambda t: t in {"red", "green", "blue"},
        ),
        (
            StructuredOutputs(regex=r"[0-9]{3}-[a-z]{2}"),
            lambda t: re.fullmatch(r"[0-9]{3}-[a-z]{2}", t),
        ),
        (StructuredOutputs(json_object=True), lambda t: t.startswith("{")),
        (
            StructuredOutputs(grammar='root ::= "(" [0-9]+ ")"'),
            lambda t: re.fullmatch(r"\([0-9]+\)", t),
        ),
    ],
)
def test_choice_regex_object_and_grammar(engine: LLMEngine, spec: StructuredOutputs, check) -> None:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_tokens=200, temperature=0.8, seed=1, n=3, structured_outputs=spec)
    for c in (
        engine.generate(PROMPTS[:2], params)[0].completions
        + engine.generate(PROMPTS[2:4], params)[1].completions
    ):
        assert check(c.text), c.text


def test_unconstrained_rows_are_unchanged_by_constrained_neighbours(engine: LLMEngine) -> None:
    greedy = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    alone = tokens(engine.generate(PROMPTS[:3], greedy))
    constrained = SamplingParams(
        max_tokens=24, temperature=0.0, structured_outputs=StructuredOutputs.json_schema(SCHEMA)
    )
    mixed = engine.generate(PROMPTS[:3] + PROMPTS[:3], [greedy] * 3 + [constrained] * 3)
    assert tokens(mixed[:3]) == alone


def test_constrained_sequence_preempted_and_resumed_gives_the_same_output(
    tiny: ModelBundle,
) -> None:
    spec = StructuredOutputs(regex="(ab |cd )+")  # long enough to need the whole pool
    params = SamplingParams(max_tokens=100, temperature=0.0, structured_outputs=spec)
    expected = [r.completions[0].text for r in engine_for(tiny).generate(PROMPTS, params)]
    assert all(re.fullmatch("((ab |cd )+)?(ab |cd |a|c|ab|cd)?", t) for t in expected)
    kv_bytes = tiny.config.kv_bytes_per_token(4) * 520
    tight = engine_for(tiny, kv=str(kv_bytes), max_num_seqs=6)
    got = [r.completions[0].text for r in tight.generate(PROMPTS, params)]
    assert tight.scheduler.num_preemptions > 0
    assert got == expected


def test_masks_at_batch_1_and_32_are_each_matchers_own(tiny: ModelBundle) -> None:
    grammars = GrammarManager(tiny.tokenizer, tiny.config.vocab_size)
    spec = StructuredOutputs.json_schema(SCHEMA)
    matchers = [grammars.matcher(spec) for _ in range(32)]
    for m in matchers[::2]:  # half of them a few tokens into the object
        for _ in range(3):
            first_allowed = int(fill_bitmask([m], tiny.config.vocab_size)[0].nonzero()[0])
            assert m.accept_token(first_allowed)
    batch = fill_bitmask(matchers, tiny.config.vocab_size)
    assert batch.shape == (32, tiny.config.vocab_size)
    for i in (0, 1, 31):
        assert torch.equal(batch[i], fill_bitmask([matchers[i]], tiny.config.vocab_size)[0])
    assert not torch.equal(batch[0], batch[1])


def test_invalid_constraints_are_refused_at_the_door(tiny: ModelBundle) -> None:
    async def main() -> None:
        aengine = AsyncEngine(engine_for(tiny))
        try:
            bad = StructuredOutputs.json_schema({"type": "strin"})
            with pytest.raises(InvalidRequestError, match="json cannot be enforced"):
                await aengine.add_request("x", SamplingParams(structured_outputs=bad))
            with pytest.raises(InvalidRequestError, match="regex"):
                spec = StructuredOutputs(regex="(open")
                await aengine.add_request("x", SamplingParams(structured_outputs=spec))
            with pytest.raises(InvalidRequestError, match="logit_bias token id"):
                await aengine.add_request("x", SamplingParams(logit_bias={10**7: 1.0}))
        finally:
            aengine.shutdown()

    asyncio.run(main())


def test_logit_bias_forces_and_forbids_tokens(engine: LLMEngine) -> None:
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    free = tokens(engine.generate([PROMPTS[0]], greedy))[0]
    forced = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logit_bias={42: 100})
    assert tokens(engine.generate([PROMPTS[0]], forced))[0] == [42] * 6
    banned = {t: -100.0 for t in set(free)}
    avoided = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logit_bias=banned)
    assert not set(tokens(engine.generate([PROMPTS[0]], avoided))[0]) & set(free)

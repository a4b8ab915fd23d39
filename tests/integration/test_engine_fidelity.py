"""Greedy output of the engine against Hugging Face transformers on the same weights.

Every generated token is checked under teacher forcing: the reference is fed the
engine's prompt and output, and at each position the engine's token must be the
reference's argmax, or a near-tie (top two logits within 1e-3), which is reported.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.api import SamplingParams
from engine.llm_engine import LLMEngine
from engine.model_source import ModelBundle
from tests.conftest import make_engine

NEW_TOKENS = 64
NEAR_TIE = 1e-3
QUESTIONS = [
    "What is the capital of France? Answer briefly.",
    "Write a haiku about a lighthouse.",
    "Explain photosynthesis to a ten-year-old.",
    "List three prime numbers greater than 50.",
    "Write a Python function that reverses a string.",
    "Translate 'good morning, my friend' into Spanish and German.",
    "What causes the seasons on Earth?",
    "Give me a recipe for a simple tomato soup.",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "What is 17 multiplied by 23? Show your work.",
    "Describe the color blue to someone who cannot see.",
    "Why is the sky blue?",
    "Write a short limerick about a cat who loves coffee.",
    "What are the main differences between TCP and UDP?",
    "Suggest five names for a bakery.",
    "How do vaccines train the immune system?",
    "Écris une phrase sur la mer en français.",
    "What is the Pythagorean theorem? Give an example.",
    "Tell me a fun fact about octopuses.",
    "In JSON, describe a book with title, author and year.",
]


def chat_prompts(bundle: ModelBundle) -> list[list[int]]:
    tok = bundle.tokenizer
    return [
        tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in QUESTIONS
    ]


def check_against_reference(
    hf: Any, prompt: list[int], output: list[int]
) -> tuple[int, list[tuple[int, float]]]:
    """Count argmax matches; return (matches, [(position, top-2 gap)] of near-tie differences)."""
    ids = torch.tensor([prompt + output])
    with torch.inference_mode():
        logits = hf(ids).logits[0, len(prompt) - 1 : -1]  # [len(output), vocab]
    matches, ties = 0, []
    for pos, (row, token) in enumerate(zip(logits, output, strict=True)):
        best = int(row.argmax())
        if best == token:
            matches += 1
            continue
        gap = float(row[best] - row[token])
        assert gap <= NEAR_TIE, (
            f"token {pos}: engine chose {token} but the reference's argmax {best} "
            f"leads by {gap:.2e} (> {NEAR_TIE}); not a near-tie"
        )
        ties.append((pos, gap))
    return matches, ties


def check_all(
    hf: Any, prompts: list[list[int]], outputs: list[list[int]]
) -> list[tuple[int, float]]:
    """Check every prompt's full output; return the near-ties met on the way."""
    ties_seen = []
    for prompt, output in zip(prompts, outputs, strict=True):
        assert len(output) == NEW_TOKENS
        matches, ties = check_against_reference(hf, prompt, output)
        assert matches + len(ties) == NEW_TOKENS
        ties_seen += ties
    return ties_seen


@pytest.fixture(scope="module")
def engine(smollm2_bundle: ModelBundle) -> LLMEngine:
    # A small token budget forces chunked prefills to interleave with decodes.
    return make_engine(smollm2_bundle, scheduler={"max_num_batched_tokens": 48, "max_num_seqs": 32})


GREEDY = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)


def test_each_prompt_alone_matches_the_reference(
    engine: LLMEngine, smollm2_bundle: ModelBundle, hf_reference_model: Any
) -> None:
    prompts = chat_prompts(smollm2_bundle)
    outputs = [engine.generate([p], GREEDY)[0].completions[0].token_ids for p in prompts]
    ties = check_all(hf_reference_model, prompts, outputs)
    print(f"alone: {len(prompts)} prompts x {NEW_TOKENS} tokens, near-ties {ties}")
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_all_prompts_batched_with_staggered_arrivals_match_the_reference(
    engine: LLMEngine, smollm2_bundle: ModelBundle, hf_reference_model: Any
) -> None:
    engine.kv.reset_prefix_cache()
    prompts = chat_prompts(smollm2_bundle)
    outputs: dict[str, list[int]] = {}
    pending = list(enumerate(prompts))
    step = 0
    while pending or engine.has_unfinished():
        # One new request every other step, so prefills land among running decodes.
        if pending and step % 2 == 0:
            i, prompt = pending.pop(0)
            engine.add_request(prompt, GREEDY, request_id=f"p{i}")
        for out in engine.step():
            outputs.setdefault(out.request_id, []).extend(out.deltas[0].token_ids)
        step += 1
    ties = check_all(hf_reference_model, prompts, [outputs[f"p{i}"] for i in range(len(prompts))])
    print(f"batched: {len(prompts)} prompts, {step} steps, near-ties {ties}")
    assert engine.kv.num_free_blocks == engine.kv.num_blocks


def test_greedy_text_equals_transformers_generate(
    engine: LLMEngine, smollm2_bundle: ModelBundle, hf_reference_model: Any
) -> None:
    prompt = chat_prompts(smollm2_bundle)[0]
    with torch.inference_mode():
        ref = hf_reference_model.generate(
            torch.tensor([prompt]), max_new_tokens=16, do_sample=False
        )[0, len(prompt) :].tolist()
    (result,) = engine.generate([prompt], SamplingParams(max_tokens=16, temperature=0.0))
    n = len(result.completions[0].token_ids)
    assert result.completions[0].token_ids == ref[:n]
    assert "Paris" in result.completions[0].text


def test_bfloat16_weights_agree_with_the_float32_reference(
    smollm2_bundle: ModelBundle, hf_reference_model: Any
) -> None:
    """The bf16-weight speed mode is not exact; it must keep 95 % top-1 agreement."""
    engine = make_engine(smollm2_bundle, backend={"weight_dtype": "bfloat16"})
    prompts = chat_prompts(smollm2_bundle)
    results = engine.generate(prompts, GREEDY)
    agree = total = 0
    for prompt, result in zip(prompts, results, strict=True):
        output = result.completions[0].token_ids
        ids = torch.tensor([prompt + output])
        with torch.inference_mode():
            best = hf_reference_model(ids).logits[0, len(prompt) - 1 : -1].argmax(-1)
        agree += int((best == torch.tensor(output)).sum())
        total += len(output)
    print(f"bf16 weights: top-1 agreement {agree}/{total}")
    assert agree / total >= 0.95

"""The native decode stack (engine/kernels/decode_stack.cpp) against the Python layer loop it
replaces on decode-only steps of the torch int8 model: the same logits to the bit."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from engine.api import SamplingParams
from engine.config import EngineConfig
from engine.kernels import load_cpu_kernels
from engine.llm_engine import LLMEngine
from engine.model_source import load_model

needs_kernels = pytest.mark.skipif(load_cpu_kernels() is None, reason="no C++ toolchain")
# Three query heads on one KV head, a hidden size that is no whole number of 64-wide tiles.
MODEL = 'dummy:{"hidden_size": 96, "num_attention_heads": 3, "num_key_value_heads": 1, "intermediate_size": 160, "num_hidden_layers": 3}'  # noqa: E501


class CountingStack:
    """Forwards to the native stack and counts the steps it ran."""

    def __init__(self, stack: Any) -> None:
        self.stack, self.steps = stack, 0

    def forward(self, *args: Any) -> Any:
        self.steps += 1
        return self.stack.forward(*args)


def _engine() -> LLMEngine:
    config = EngineConfig(
        model={"path": MODEL},
        cache={"kv_cache_memory": "16MiB", "block_size": 4},
        backend={"name": "torch", "quantization": "int8"},
        scheduler={"max_num_batched_tokens": 24},  # prompts prefill in chunks beside decodes
    )
    return LLMEngine(config, bundle=load_model(MODEL))


def _run(engine: LLMEngine) -> list[tuple[list[int], list[Any]]]:
    prompts = [[5 + i for i in range(n)] for n in (3, 17, 9, 30)]
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, logprobs=3)
    results = engine.generate(prompts, params)
    return [(r.completions[0].token_ids, r.completions[0].logprobs) for r in results]


@needs_kernels
def test_decode_stack_gives_the_layer_loops_logits_bit_for_bit() -> None:
    # Two engines over the same weights: a second run in one engine would hit its prefix cache
    # and prefill in other chunks.
    engine = _engine()
    model = engine.backend.model
    assert model.decode_stack is not None, "torch int8 builds the decode stack"
    counting = CountingStack(model.decode_stack)
    model.decode_stack = counting
    stacked = _run(engine)
    assert counting.steps > 0, "decode-only steps went through the stack"
    engine = _engine()
    engine.backend.model.decode_stack = None
    looped = _run(engine)
    assert stacked == looped


@needs_kernels
def test_decode_stack_refuses_pools_of_another_layer_count() -> None:
    stack = _engine().backend.model.decode_stack
    assert stack.num_layers == 3
    h = torch.zeros(1, 96)
    with pytest.raises(RuntimeError, match="one K and one V pool per layer"):
        stack.forward(h, h[:, :32], h[:, :32], [], [], *([torch.zeros(1, dtype=torch.long)] * 3))

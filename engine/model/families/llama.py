"""Llama: the reference every other family states its differences from."""

from engine.model.families.base import Family, nothing, nothing_written

FAMILY = Family("llama", "LlamaForCausalLM", read=nothing, write=nothing_written)

"""Speculative decoding with no draft model: proposers guess a sequence's next tokens from text
it (or other requests) already has, and the engine checks every guess in the same batched
step as a multi-row decode, keeping only the tokens the model itself produces (verify.py)."""

from engine.spec_decode.proposers import NgramProposer, Proposer, SuffixProposer, create_proposer
from engine.spec_decode.speculator import Speculator
from engine.spec_decode.verify import SpecStats, accepted_prefix

__all__ = [
    "NgramProposer",
    "Proposer",
    "SpecStats",
    "Speculator",
    "SuffixProposer",
    "accepted_prefix",
    "create_proposer",
]

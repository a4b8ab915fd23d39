"""Accuracy gates for reduced-precision modes, against the float model, on what users notice.

Two measurements, each through the backends' ordinary forward pass (so what is measured is
exactly what serves):
- teacher forcing on the packaged eval text (engine/data/eval_text.txt, 512-token windows):
  perplexity ratio, next-token top-1 agreement and the mean KL divergence of the candidate's
  next-token distribution from the float model's (as llama.cpp's perplexity tool reports it);
- greedy chat continuations (engine/data/chat_prompts.json, 32 tokens each): how many are
  identical to the float model's, and whether every answer the float model gets right (a
  prompt's "answer" found in its continuation) stays right.
Top-1 agreement of 97.5 % predicts identical 32-token continuations on about 0.975^32 = 45 %
of prompts, hence the 40 % gate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.backends import Backend, BatchInputs
from engine.model_source.tokenizer import Tokenizer

MAX_PERPLEXITY_RATIO = 1.005
MIN_TOP1_AGREEMENT = 0.975
MIN_IDENTICAL_CONTINUATIONS = 0.40
CHAT_NEW_TOKENS = 32

_DATA = Path(__file__).with_name("data")
GATE_TEXT = _DATA / "eval_text.txt"
CHAT_PROMPTS = _DATA / "chat_prompts.json"
_BLOCK = 16


@dataclass(frozen=True)
class TextComparison:
    """A candidate against the reference, teacher-forced over one text."""

    perplexity_ratio: float
    top1_agreement: float
    mean_kl: float
    """Mean over positions of KL(reference || candidate) of the next-token distributions."""


@dataclass(frozen=True)
class ChatComparison:
    """Greedy chat continuations of a candidate against the reference's."""

    prompts: int
    identical: int
    answers_right: int
    """Prompts with a known answer that the reference gets right."""
    answers_lost: tuple[str, ...]
    """Of those, the prompts whose answer the candidate loses."""


@dataclass(frozen=True)
class GateResult:
    """Both comparisons, and whether they pass the gates."""

    text: TextComparison
    chat: ChatComparison

    @property
    def passed(self) -> bool:
        return (
            self.text.perplexity_ratio <= MAX_PERPLEXITY_RATIO
            and self.text.top1_agreement >= MIN_TOP1_AGREEMENT
            and self.chat.identical >= MIN_IDENTICAL_CONTINUATIONS * self.chat.prompts
            and not self.chat.answers_lost
        )

    def describe(self) -> str:
        t, c = self.text, self.chat
        lost = f", lost: {'; '.join(c.answers_lost)}" if c.answers_lost else ""
        return (
            f"perplexity {100 * (t.perplexity_ratio - 1):+.2f}% (gate "
            f"+{100 * (MAX_PERPLEXITY_RATIO - 1):.1f}%), top-1 {100 * t.top1_agreement:.1f}% "
            f"(gate {100 * MIN_TOP1_AGREEMENT:.1f}%), KL {t.mean_kl:.5f}; greedy chats "
            f"identical {c.identical}/{c.prompts} (gate {100 * MIN_IDENTICAL_CONTINUATIONS:.0f}%), "
            f"answers kept {c.answers_right - len(c.answers_lost)}/{c.answers_right}{lost}"
        )

    def to_json(self) -> dict[str, Any]:
        return {"text": asdict(self.text), "chat": asdict(self.chat)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GateResult:
        chat = dict(data["chat"], answers_lost=tuple(data["chat"]["answers_lost"]))
        return cls(TextComparison(**data["text"]), ChatComparison(**chat))


def _prefill_inputs(chunk: np.ndarray, blocks: int) -> BatchInputs:
    n = len(chunk)
    return BatchInputs(
        token_ids=chunk,
        positions=np.arange(n, dtype=np.int64),
        slot_mapping=np.arange(n, dtype=np.int64),
        block_tables=np.arange(blocks, dtype=np.int64)[None],
        context_lens=np.array([n], dtype=np.int64),
        query_start_loc=np.array([0, n], dtype=np.int64),
        logits_indices=np.arange(n - 1, dtype=np.int64),
    )


def compare_on_text(
    reference: Backend, candidate: Backend, token_ids: list[int], window: int = 512
) -> TextComparison:
    """Teacher-forced passes of both backends in independent windows of ``window`` tokens
    (each from position 0, so both see the same contexts); reallocates their KV pools."""
    blocks = -(-window // _BLOCK)
    for backend in (reference, candidate):
        backend.allocate_kv_cache(blocks, _BLOCK)
    ids = np.asarray(token_ids, dtype=np.int64)
    nll_ref, nll_cand, agree, kl = [], [], [], []
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window]
        if len(chunk) < 2:
            break
        inputs = _prefill_inputs(chunk, blocks)
        target = torch.from_numpy(chunk[1:])[:, None]
        logp_ref = torch.log_softmax(reference.forward(inputs).float(), dim=-1)  # [n-1, vocab]
        logp_cand = torch.log_softmax(candidate.forward(inputs).float(), dim=-1)
        nll_ref.append(-logp_ref.gather(1, target)[:, 0].numpy())
        nll_cand.append(-logp_cand.gather(1, target)[:, 0].numpy())
        agree.append((logp_ref.argmax(-1) == logp_cand.argmax(-1)).numpy())
        kl.append((logp_ref.exp() * (logp_ref - logp_cand)).sum(-1).numpy())
    return TextComparison(
        perplexity_ratio=float(
            np.exp(np.concatenate(nll_cand).mean() - np.concatenate(nll_ref).mean())
        ),
        top1_agreement=float(np.concatenate(agree).mean()),
        mean_kl=float(np.concatenate(kl).mean()),
    )


def greedy_continuations(
    backend: Backend, prompts: list[list[int]], new_tokens: int
) -> list[list[int]]:
    """``new_tokens`` greedy tokens after each prompt: one prefill of all prompts, then
    batched decode steps; reallocates the backend's KV pool."""
    need = [-(-(len(p) + new_tokens) // _BLOCK) for p in prompts]
    starts = np.cumsum([0, *need])
    tables = np.zeros((len(prompts), max(need)), dtype=np.int64)
    for i, n in enumerate(need):
        tables[i, :n] = np.arange(starts[i], starts[i] + n)
    backend.allocate_kv_cache(int(starts[-1]), _BLOCK)

    def slots(seq: int, positions: np.ndarray) -> np.ndarray:
        return tables[seq, positions // _BLOCK] * _BLOCK + positions % _BLOCK

    lens = np.array([len(p) for p in prompts], dtype=np.int64)
    positions = np.concatenate([np.arange(n, dtype=np.int64) for n in lens])
    inputs = BatchInputs(
        token_ids=np.concatenate([np.asarray(p, dtype=np.int64) for p in prompts]),
        positions=positions,
        slot_mapping=np.concatenate([slots(i, np.arange(n)) for i, n in enumerate(lens)]),
        block_tables=tables,
        context_lens=lens.copy(),
        query_start_loc=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
        logits_indices=(np.cumsum(lens) - 1).astype(np.int64),
    )
    out: list[list[int]] = [[] for _ in prompts]
    rows = np.arange(len(prompts))
    for step in range(new_tokens):
        tokens = backend.forward(inputs).float().argmax(-1).numpy().astype(np.int64)
        for i, t in enumerate(tokens):
            out[i].append(int(t))
        if step == new_tokens - 1:
            break
        pos = lens + step  # where each sequence's newest token goes
        inputs = BatchInputs(
            token_ids=tokens,
            positions=pos,
            slot_mapping=tables[rows, pos // _BLOCK] * _BLOCK + pos % _BLOCK,
            block_tables=tables,
            context_lens=pos + 1,
            query_start_loc=np.arange(len(prompts) + 1, dtype=np.int64),
            logits_indices=rows.astype(np.int64),
        )
    return out


def load_chat_prompts() -> list[dict[str, str]]:
    """The packaged chat prompt set: [{"prompt": ..., "answer"?: ...}]."""
    return list(json.loads(CHAT_PROMPTS.read_text()))


def compare_on_chats(
    reference: Backend,
    candidate: Backend,
    tokenizer: Tokenizer,
    prompts: list[dict[str, str]],
    new_tokens: int = CHAT_NEW_TOKENS,
) -> ChatComparison:
    """Greedy continuations of both backends on the chat prompts, compared. A model without
    a chat template (a base model such as Gemma 3 270M) continues each prompt as plain text."""
    ids = []
    for p in prompts:
        if tokenizer.chat_template is None:
            ids.append(tokenizer.encode(p["prompt"]))
            continue
        text = tokenizer.apply_chat_template([{"role": "user", "content": p["prompt"]}])
        ids.append(tokenizer.encode(text, add_special_tokens=False))
    ref = greedy_continuations(reference, ids, new_tokens)
    cand = greedy_continuations(candidate, ids, new_tokens)
    right, lost = 0, []
    for p, r, c in zip(prompts, ref, cand, strict=True):
        answer = p.get("answer", "").lower()
        if answer and answer in tokenizer.decode(r).lower():
            right += 1
            if answer not in tokenizer.decode(c).lower():
                lost.append(p["prompt"])
    identical = sum(r == c for r, c in zip(ref, cand, strict=True))
    return ChatComparison(len(prompts), identical, right, tuple(lost))


def run_gates(reference: Backend, candidate: Backend, tokenizer: Tokenizer) -> GateResult:
    """The candidate's figures on the packaged eval text and chat prompts."""
    text = compare_on_text(reference, candidate, tokenizer.encode(GATE_TEXT.read_text()))
    chat = compare_on_chats(reference, candidate, tokenizer, load_chat_prompts())
    return GateResult(text, chat)

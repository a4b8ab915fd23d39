"""SmoothQuant for W8A8: move activation outliers into the weights before quantizing.

Per-token int8 activations lose the small channels of rows whose scale a few outlier
channels set; per channel j, dividing the activation by s_j and multiplying the weight's
column j by s_j leaves every product unchanged and evens both out (Xiao et al., 2023,
s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)). Each division is folded into the op that
makes the activation, so the model runs no extra op:

- qkv and gate/up inputs: the RMSNorm weight before them;
- down input, silu(gate) * up: the up rows of gate_up (the product is linear in up),
  unless down stays float (the torch backend's choice);
- o input, the attention output: the V rows of qkv (attention is linear in V), one
  factor per KV-head channel, shared by the query heads of its group;
- LM head input: the final norm (the head must then be untied from the embedding).

The activation maxima come from the float model on a packaged calibration text
(engine/data/calibration_text.txt, chats unlike the gate and eval texts).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.llama import DecoderLayer, LlamaModel, Projection

CALIBRATION_TEXT = Path(__file__).parents[1] / "data" / "calibration_text.txt"
# Measured on tests/data/english_eval.txt (engine/backends/README.md): 0.5 balanced the
# two; 0.7 raised the eval text's perplexity by 3.5 %.
DEFAULT_ALPHA = 0.5
_MIN_FACTOR, _MAX_FACTOR = 1e-2, 1e2


class CausalAttention:
    """Plain causal attention over one sequence, no cache: enough for a calibration pass."""

    def __call__(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        group = q.shape[1] // k.shape[1]
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1),  # [heads, n, hd]
            k.repeat_interleave(group, dim=1).transpose(0, 1),
            v.repeat_interleave(group, dim=1).transpose(0, 1),
            is_causal=True,
        )
        return out.transpose(0, 1)  # [n, heads, hd]


@torch.inference_mode()
def input_absmax(model: LlamaModel, token_ids: list[int]) -> dict[str, torch.Tensor]:
    """Max |activation| per input channel of every projection over one pass of the text."""
    stats: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, Projection):

            def record(mod: nn.Module, args: tuple[torch.Tensor], key: str = name) -> None:
                amax = args[0].detach().abs().amax(0).float()  # [in]
                stats[key] = amax if key not in stats else torch.maximum(stats[key], amax)

            hooks.append(module.register_forward_pre_hook(record))
    try:
        ids = torch.tensor(token_ids, dtype=torch.long)
        positions = torch.arange(len(token_ids))
        model(ids, positions, torch.arange(len(token_ids)), CausalAttention())
    finally:
        for h in hooks:
            h.remove()
    return stats


def _factor(act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float) -> torch.Tensor:
    s = act_max.clamp(min=1e-5).pow(alpha) / weight_max.clamp(min=1e-5).pow(1 - alpha)
    return s.clamp(_MIN_FACTOR, _MAX_FACTOR)


@torch.no_grad()
def fold_smoothing(
    model: LlamaModel, stats: dict[str, torch.Tensor], alpha: float, skip: tuple[str, ...] = ()
) -> None:
    """Fold SmoothQuant factors into the float model in place (its outputs do not change).

    Projections named in ``skip`` (the ones that stay float) keep their inputs as they are:
    smoothed, the down projection's input once turned a greedy chat answer to nonsense in
    bf16 although the gates passed (engine/backends/README.md)."""
    cfg = model.cfg
    heads, kv_heads, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    group, inter = heads // kv_heads, cfg.intermediate_size
    v_start = (heads + kv_heads) * hd
    for i, layer in enumerate(model.layers):
        assert isinstance(layer, DecoderLayer)
        p = f"layers.{i}."
        for norm, proj, key in (
            (layer.input_layernorm, layer.qkv_proj, "qkv_proj"),
            (layer.post_attention_layernorm, layer.gate_up_proj, "gate_up_proj"),
        ):
            if key not in skip:
                s = _factor(stats[p + key], proj.weight.abs().amax(0), alpha)
                norm.weight.div_(s)
                proj.weight.mul_(s)
        if "down_proj" not in skip:
            s = _factor(stats[p + "down_proj"], layer.down_proj.weight.abs().amax(0), alpha)
            layer.gate_up_proj.weight[inter:].div_(s[:, None])
            layer.down_proj.weight.mul_(s)
        if "o_proj" not in skip:
            # o's input channel (h, d) reads V head h // group: one factor per (kv head, d).
            act = stats[p + "o_proj"].view(kv_heads, group, hd).amax(1)  # [kv_heads, hd]
            wmax = layer.o_proj.weight.abs().amax(0).view(kv_heads, group, hd).amax(1)
            sv = _factor(act, wmax, alpha)  # [kv_heads, hd]
            layer.qkv_proj.weight[v_start:].div_(sv.reshape(-1, 1))
            layer.o_proj.weight.mul_(sv[:, None, :].expand(kv_heads, group, hd).reshape(-1))
    if "lm_head" in skip:
        return
    if model.lm_head.weight is model.embed_tokens.weight:
        model.lm_head.weight = nn.Parameter(model.lm_head.weight.clone(), requires_grad=False)
    s = _factor(stats["lm_head"], model.lm_head.weight.abs().amax(0), alpha)
    model.norm.weight.div_(s)
    model.lm_head.weight.mul_(s)


def smooth_for_int8(
    model: LlamaModel,
    token_ids: list[int],
    alpha: float = DEFAULT_ALPHA,
    skip: tuple[str, ...] = (),
) -> None:
    """Calibrate on ``token_ids`` and fold the factors into every projection but ``skip``."""
    fold_smoothing(model, input_absmax(model, token_ids), alpha, skip)

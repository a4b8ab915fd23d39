"""The feed-forward blocks: a gated MLP (SwiGLU or GeGLU) and a mixture of such experts."""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.linear import Projection
from engine.model_source.arch import ArchConfig


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)), gate and up fused into one projection."""

    def __init__(self, hidden: int, intermediate: int, activation: str) -> None:
        super().__init__()
        self.intermediate_size = intermediate
        self.activation = activation
        self.gate_up_proj = Projection(hidden, 2 * intermediate)
        self.down_proj = Projection(intermediate, hidden)
        self.kernels: ModuleType | None = None  # engine.kernels: CPU float32 SwiGLU

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, hidden]
        return self.down_proj(self._gated(self.gate_up_proj(x)))

    def _gated(self, gate_up: torch.Tensor) -> torch.Tensor:  # [n, 2 * inter] -> [n, inter]
        native = self.kernels is not None and gate_up.dtype == torch.float32
        if native and self.activation == "silu" and gate_up.device.type == "cpu":
            assert self.kernels is not None
            return self.kernels.silu_and_mul(gate_up)
        gate, up = gate_up.split(self.intermediate_size, dim=-1)
        if self.activation == "silu":
            return F.silu(gate) * up
        return F.gelu(gate, approximate="tanh") * up


class MixtureOfExperts(nn.Module):
    """Top-k routing over gated-MLP experts, each token through only the experts it picked.

    The router's softmax is taken in float32 over all experts, then the top k are kept
    (renormalised to sum to one where the family does). Tokens are grouped by expert with one
    sort, each chosen expert multiplies only its own rows (through whatever linear kernel its
    projections use, int8 blocks included), and the weighted results are added back per
    token. A shared expert, where there is one, runs for every token behind a sigmoid gate.
    """

    def __init__(self, cfg: ArchConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.top_k = cfg.num_experts_per_tok
        self.renormalize = cfg.norm_topk_prob
        # The router stays a plain float matrix under every linear kernel: it is small, and
        # its choices should not move with the experts' quantization.
        self.router = nn.Parameter(torch.zeros(cfg.num_experts, h), requires_grad=False)
        self.experts = nn.ModuleList(
            GatedMLP(h, cfg.moe_intermediate_size, cfg.hidden_act) for _ in range(cfg.num_experts)
        )
        self.shared_expert: GatedMLP | None = None
        self.shared_expert_gate: nn.Parameter | None = None
        if cfg.shared_expert_intermediate_size:
            self.shared_expert = GatedMLP(h, cfg.shared_expert_intermediate_size, cfg.hidden_act)
            self.shared_expert_gate = nn.Parameter(torch.zeros(1, h), requires_grad=False)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's chosen experts [n, k] and their weights [n, k] (x's dtype)."""
        probs = F.linear(x, self.router).float().softmax(dim=-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return chosen, weights.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, hidden] -> [n, hidden]
        chosen, weights = self.route(x)
        flat = chosen.reshape(-1)
        order = torch.argsort(flat, stable=True)  # (token, slot) pairs grouped by expert
        counts = torch.bincount(flat, minlength=len(self.experts)).tolist()
        tokens = order // self.top_k
        token_weights = weights.reshape(-1)[order].unsqueeze(1)
        out = torch.zeros_like(x)
        start = 0
        for expert, count in zip(self.experts, counts, strict=True):
            if count:
                rows = tokens[start : start + count]
                y = expert(x[rows]) * token_weights[start : start + count]
                out.index_add_(0, rows, y)
                start += count
        if self.shared_expert is not None:
            assert self.shared_expert_gate is not None
            gate = torch.sigmoid(F.linear(x, self.shared_expert_gate))
            out = out + gate * self.shared_expert(x)
        return out

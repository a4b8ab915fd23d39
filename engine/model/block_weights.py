"""Weights as blocks of 32 input channels with a scale (and a minimum) each, as GGUF holds them.

A GGUF model's Q4_1 and Q8_0 tensors reach the engine dequantized to float32; those floats
lie exactly on their blocks' grids (w = d * q + m, d and m float16), so the grid is
recovered here and checked value for value, and the block kernel (engine/kernels/
block_linear.cpp) then multiplies by exactly the weights the float model uses. A weight on no
such grid (a float checkpoint, another GGUF type) is quantized to 8-bit blocks instead, the
one step that changes it (about 0.4 % of a block's largest weight at most).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BLOCK = 32
PANEL = 8  # output columns per packed panel (block_linear.cpp)


@dataclass(frozen=True)
class BlockWeight:
    """q [n, k] (4 bits: uint8 0..15; 8 bits: int8), scales d and minima m [n, k / 32]."""

    q: torch.Tensor
    d: torch.Tensor
    m: torch.Tensor | None
    bits: int
    exact: bool
    """True when d * q + m reproduces the float weight bit for bit."""

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [n, k] these blocks stand for."""
        n, k = self.q.shape
        q = torch.nn.functional.pad(self.q.float(), (0, -k % BLOCK)).view(n, -1, BLOCK)
        w = self.d[..., None] * q
        if self.m is not None:
            w = w + self.m[..., None]
        return w.view(n, -1)[:, :k]


def _on_q4_1_grid(blocks: torch.Tensor) -> BlockWeight | None:
    # blocks: [n, kb, 32]. The smallest weight of a block is its minimum (q = 0), the largest
    # d * 15 + m; d and m are float16 values.
    m = blocks.amin(-1)
    d = ((blocks.amax(-1) - m) / 15).half().float()
    q = torch.where(d[..., None] > 0, (blocks - m[..., None]) / d[..., None], 0.0)
    q = q.round().clamp(0, 15)
    if not torch.equal(d[..., None] * q + m[..., None], blocks) or not torch.equal(
        m.half().float(), m
    ):
        return None
    n = blocks.shape[0]
    return BlockWeight(q.to(torch.uint8).view(n, -1), d, m, bits=4, exact=True)


def _q8_0(blocks: torch.Tensor) -> BlockWeight:
    # The largest magnitude of a block is 127 * d.
    d = (blocks.abs().amax(-1) / 127).half().float()
    q = torch.where(d[..., None] > 0, blocks / d[..., None], 0.0).round().clamp(-127, 127)
    exact = torch.equal(d[..., None] * q, blocks)
    n = blocks.shape[0]
    return BlockWeight(q.to(torch.int8).view(n, -1), d, None, bits=8, exact=exact)


def to_blocks(w: torch.Tensor) -> BlockWeight:
    """The blocks of a float weight [n, k]: its own 4-bit or 8-bit grid when it lies on one,
    else 8-bit blocks (k is zero-padded to a whole block)."""
    w = w.detach().float()
    n, k = w.shape
    if k % BLOCK:
        w = torch.nn.functional.pad(w, (0, BLOCK - k % BLOCK))
    blocks = w.reshape(n, -1, BLOCK)
    found = _on_q4_1_grid(blocks)
    if found is None:
        found = _q8_0(blocks)
    if k % BLOCK:
        found = BlockWeight(found.q[:, :k].contiguous(), found.d, found.m, found.bits, found.exact)
    return found


def pack_scales(s: torch.Tensor) -> torch.Tensor:
    """Per-block scales [n, blocks] (float16 values) in the kernel's layout [panels, blocks,
    8] float16, zero padded."""
    n, blocks = s.shape
    if not torch.equal(s.half().float(), s.float()):
        raise ValueError("block scales must be float16 values")
    padded = torch.zeros(-(-n // PANEL) * PANEL, blocks, dtype=torch.float16)
    padded[:n] = s
    return padded.view(-1, PANEL, blocks).permute(0, 2, 1).contiguous()

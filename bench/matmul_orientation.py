"""Which float32 matmul orientation is fastest on this CPU, per number of rows.

Streams the 30 layers' projection weights of SmolLM2-135M (424 MB, more than
any cache) so the figures match a real decode step:

    .venv/bin/python bench/matmul_orientation.py

Orientations: F.linear(x, W); (W @ x^T)^T with W [out, in]; x @ W^T with W^T
stored contiguous [in, out]; and oneDNN's linear over W reordered once into its blocked
layout. engine/model/decoder.py's Projection uses the result.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe

LAYERS = 30
SHAPES = [(576, 960), (576, 576), (576, 3072), (1536, 576)]  # (in, out): qkv, o, gate_up, down


def main() -> None:
    weights = [[torch.randn(out, inp) for inp, out in SHAPES] for _ in range(LAYERS)]
    transposed = [[w.t().contiguous() for w in ws] for ws in weights]
    packed = [[torch.ops.mkldnn._reorder_linear_weight(w, None) for w in ws] for ws in weights]
    modes: dict[str, Callable[[torch.Tensor, int, int], torch.Tensor]] = {
        "F.linear(x, W)": lambda x, layer, i: torch.nn.functional.linear(x, weights[layer][i]),
        "(W @ x^T)^T": lambda x, layer, i: torch.mm(weights[layer][i], x.t()),
        "x @ W^T (stored)": lambda x, layer, i: torch.mm(x, transposed[layer][i]),
        "oneDNN, W blocked": lambda x, layer, i: torch.ops.mkldnn._linear_pointwise(
            x, packed[layer][i], None, "none", [None], ""
        ),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per 30 layers")
    print(describe())
    print("| rows | " + " | ".join(modes) + " |")
    print("| --- |" + " --- |" * len(modes))
    for rows in (1, 2, 4, 8, 16, 32, 64, 128, 512):
        xs = {inp: torch.randn(rows, inp) for inp, _ in SHAPES}
        cells = []
        for fn in modes.values():

            def step(
                fn: Callable[[torch.Tensor, int, int], torch.Tensor] = fn,
                xs: dict[int, torch.Tensor] = xs,
            ) -> None:
                for layer in range(LAYERS):
                    for i, (inp, _) in enumerate(SHAPES):
                        fn(xs[inp], layer, i)

            step()
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            cells.append(f"{sorted(times)[2] * 1e3:.1f}")
        print(f"| {rows} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    with torch.inference_mode():
        main()

"""INT8 forms of the float step graph: dynamic (CPU) and weight QDQ (TensorRT).

Which layers stay float is measured (engine/backends/README.md has the numbers): every
weight MatMul is int8 in the ONNX forms, the vocabulary projection included (+0.02 points
of perplexity, 5-8 % faster steps; OnnxOptions.int8_lm_head=False keeps it float);
embeddings (a gather) and norms stay float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Weight MatMuls whose node name contains one of these stay float unless the vocabulary
# projection is asked for in int8 (GraphOptions.int8_lm_head, the default).
FLOAT_LAYERS = ("lm_head",)


def weight_matmuls(path: Path) -> list[str]:
    """Names of the MatMuls whose second input is a constant weight."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def _stays_float(name: str, float_layers: Sequence[str]) -> bool:
    return any(tag in name for tag in float_layers)


def quantize_dynamic_blockwise(
    src: Path, dst: Path, float_layers: Sequence[str], block_size: int
) -> None:
    """Weights int8 (symmetric, one scale per ``block_size`` input channels of each output
    channel), activations quantized to int8 on the fly in the same blocks: ONNX Runtime's
    MatMulNBits with accuracy level 4, whose CPU kernel multiplies int8 by int8.

    Measured on SmolLM2-135M (engine/backends/README.md), against ONNX Runtime's dynamic
    quantizer (one activation scale per tensor: top-1 agreement 62 %, and 8-bit weights
    overflow the u8 x s8 kernel on CPUs without VNNI) and against per-token activation
    scales with 7-bit weights (perplexity +3.9 % on the gate text): blocks keep each
    token's outlier channels from flattening the rest.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    excluded = [n for n in weight_matmuls(src) if _stays_float(n, float_layers)]
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=8,
        block_size=block_size,
        is_symmetric=True,
        accuracy_level=4,  # int8 activations: the int8 x int8 kernel
        nodes_to_exclude=excluded,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def quantize_qdq_weights(src: Path, dst: Path, float_layers: Sequence[str]) -> None:
    """INT8 weights in QDQ form: each weight stored int8 (symmetric, per output channel)
    behind a DequantizeLinear, activations float. TensorRT builds weight-only INT8
    engines from this pattern (fp16 activations); ONNX Runtime's CPU provider runs it too,
    which is how its accuracy is tested here.

    Fully static QDQ (activations too, calibrated on CALIBRATION_PROMPTS with MinMax
    ranges) was measured and rejected: perplexity +40 %, top-1 agreement 70 %, and still
    +39 % with only the norm-fed projections quantized — per-tensor activation ranges
    cannot hold this model's outlier channels.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    targets = {n for n in weight_matmuls(src) if not _stays_float(n, float_layers)}
    inits = {i.name: i for i in graph.initializer}
    added, replaced, nodes = [], set(), []
    for node in graph.node:
        if node.name in targets:
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)  # [K, N]
            scale = (np.maximum(np.abs(w).max(axis=0), 1e-8) / 127.0).astype(np.float32)
            w_q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
            p = node.name.strip("/").replace("/", "_")
            added += [
                numpy_helper.from_array(w_q, p + "_wq"),
                numpy_helper.from_array(scale, p + "_ws"),
                numpy_helper.from_array(np.zeros_like(w_q[0]), p + "_wz"),
            ]
            replaced.add(node.input[1])
            nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [p + "_wq", p + "_ws", p + "_wz"],
                    [p + "_w"],
                    axis=1,
                    name=p + "_dq",
                )
            )
            node.input[1] = p + "_w"
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [i for i in graph.initializer if i.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    onnx.save(model, str(dst))

"""INT8 forms of the float step graph: dynamic (CPU) and weight QDQ (TensorRT).

Which layers stay float is measured (engine/backends/README.md has the numbers): on
SmolLM2-135M, int8 `down_proj` inputs (SiLU(gate) * up, the model's activation outliers)
cost 1.7 percentage points of perplexity and 2.5 of top-1 agreement on their own, and the
vocabulary projection is the layer the logits are most sensitive to; both stay float.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# Weight MatMuls whose node name contains one of these stay float (see the module doc).
FLOAT_LAYERS = ("down_proj", "lm_head")

# 7-bit weights: on CPUs without VNNI the u8 x s8 kernel adds pairs of products in 16-bit
# lanes, which 8-bit weights overflow (measured: perplexity x10^6 with 8 bits).
_WEIGHT_QMAX = 63


def weight_matmuls(path: Path, float_layers: Sequence[str]) -> list[str]:
    """Names of the MatMuls with a constant weight that are to be quantized."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul"
        and n.input[1] in inits
        and not any(tag in n.name for tag in float_layers)
    ]


def _float_matmuls(path: Path, float_layers: Sequence[str]) -> list[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and any(tag in n.name for tag in float_layers)
    ]


def quantize_dynamic_rowwise(src: Path, dst: Path, float_layers: Sequence[str]) -> None:
    """Weights int8 per output channel; activations quantized on the fly per token (row).

    ONNX Runtime's own dynamic quantizer takes one activation scale per tensor, so one
    token's outliers flatten every other token in a prefill (measured: top-1 agreement
    62 %); a scale per row keeps each token's precision. Each MatMul(x, W) becomes
    MatMulInteger(quantize_row(x), W_int8) * row_scale * channel_scale.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    targets = set(weight_matmuls(src, float_layers))
    inits = {i.name: i for i in graph.initializer}
    consts: dict[str, np.ndarray] = {
        "rowq_zp_a": np.array(128, np.uint8),
        "rowq_zp_b": np.array(0, np.int8),
        "rowq_eps": np.array(1e-8, np.float32),
        "rowq_127": np.array(127.0, np.float32),
        "rowq_128": np.array(128.0, np.float32),
        "rowq_0": np.array(0.0, np.float32),
        "rowq_255": np.array(255.0, np.float32),
    }
    added = [numpy_helper.from_array(v, k) for k, v in consts.items()]
    replaced: set[str] = set()
    nodes = []
    for node in graph.node:
        if node.name not in targets:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)  # [K, N]
        w_scale = np.maximum(np.abs(w).max(axis=0), 1e-8) / _WEIGHT_QMAX  # [N]
        w_q = np.clip(np.round(w / w_scale), -_WEIGHT_QMAX, _WEIGHT_QMAX).astype(np.int8)
        p = node.name.strip("/").replace("/", "_")
        added += [
            numpy_helper.from_array(w_q, p + "_wq"),
            numpy_helper.from_array(w_scale.astype(np.float32), p + "_ws"),
        ]
        replaced.add(node.input[1])
        x, y = node.input[0], node.output[0]
        nodes += [
            # symmetric per-row scale: max |x| of each token maps to 127 (zero point 128)
            helper.make_node("Abs", [x], [p + "_abs"]),
            helper.make_node("ReduceMax", [p + "_abs"], [p + "_amax"], axes=[-1], keepdims=1),
            helper.make_node("Max", [p + "_amax", "rowq_eps"], [p + "_amax_eps"]),
            helper.make_node("Div", [p + "_amax_eps", "rowq_127"], [p + "_xs"]),  # [T, 1]
            helper.make_node("Div", [x, p + "_xs"], [p + "_xn"]),
            helper.make_node("Round", [p + "_xn"], [p + "_xr"]),
            helper.make_node("Add", [p + "_xr", "rowq_128"], [p + "_xo"]),
            helper.make_node("Clip", [p + "_xo", "rowq_0", "rowq_255"], [p + "_xc"]),
            helper.make_node("Cast", [p + "_xc"], [p + "_xq"], to=TensorProto.UINT8),
            helper.make_node(
                "MatMulInteger", [p + "_xq", p + "_wq", "rowq_zp_a", "rowq_zp_b"], [p + "_acc"]
            ),
            helper.make_node("Cast", [p + "_acc"], [p + "_accf"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [p + "_accf", p + "_xs"], [p + "_rows"]),
            helper.make_node("Mul", [p + "_rows", p + "_ws"], [y]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [i for i in graph.initializer if i.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    onnx.save(model, str(dst))


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
    targets = set(weight_matmuls(src, float_layers))
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

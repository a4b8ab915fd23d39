"""INT8 quantization passes over the float ONNX encoder, one function per scheme.

``per_token`` (the default) rewrites every MatMul whose second input is a weight
into: symmetric INT8 activations with one scale per token (row), INT8 weights
with one scale per output channel, ``MatMulInteger`` (uint8 x int8, the fast
MLAS path), then both scales applied to the int32 result. onnxruntime's own
``quantize_dynamic`` uses one activation scale per tensor; MiniLM's LayerNorm and
GELU outputs carry a few outlier channels, so per-tensor ranges lose most short
inputs' resolution (mean cosine ~0.990, worst ~0.96 against float), while
per-token scales keep it (~0.995 mean). Attention's activation x activation
MatMuls stay float in both schemes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_CONSTANTS: dict[str, np.ndarray] = {
    "tq_inv127": np.array(1.0 / 127.0, np.float32),
    "tq_128_5": np.array(128.5, np.float32),
    "tq_eps": np.array(1e-12, np.float32),
    "tq_zero_point": np.array(128, np.uint8),
}


def _quantize_activation(x: str) -> tuple[list[onnx.NodeProto], str, str]:
    """Nodes turning float ``x`` into uint8 codes (zero point 128) and per-token scales."""
    p = "tq_" + x.replace("/", "_").replace(":", "_")
    node = helper.make_node
    nodes = [
        node("Abs", [x], [p + "_abs"]),
        # [..., tokens, 1]: one scale per token; |x| / scale <= 127 needs no clipping
        node("ReduceMax", [p + "_abs"], [p + "_amax"], axes=[-1], keepdims=1),
        node("Mul", [p + "_amax", "tq_inv127"], [p + "_s0"]),
        node("Max", [p + "_s0", "tq_eps"], [p + "_scale"]),
        node("Reciprocal", [p + "_scale"], [p + "_inv"]),
        node("Mul", [x, p + "_inv"], [p + "_xs"]),  # in [-127, 127]
        # uint8 codes with zero point 128 (MatMulInteger's u8 x s8 kernel is the fast one);
        # +128.5 then Cast's truncation rounds to nearest in one pass instead of two
        node("Add", [p + "_xs", "tq_128_5"], [p + "_xu"]),
        node("Cast", [p + "_xu"], [p + "_xq"], to=TensorProto.UINT8),
    ]
    return nodes, p + "_xq", p + "_scale"


def _quantized_matmul(
    name: str, codes: str, scale: str, out: str, weight: np.ndarray
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing out = x @ weight from x's codes/scales and a per-channel INT8 weight."""
    # weight: [in, out]; one scale per output column
    w_scale = np.abs(weight).max(axis=0) / 127.0
    w_scale[w_scale == 0] = 1.0
    w_q = np.clip(np.round(weight / w_scale), -127, 127).astype(np.int8)
    p = "tq_" + name.replace("/", "_")
    inits = [
        numpy_helper.from_array(w_q, p + "_wq"),
        numpy_helper.from_array(w_scale.astype(np.float32), p + "_wscale"),
    ]
    node = helper.make_node
    nodes = [
        node("MatMulInteger", [codes, p + "_wq", "tq_zero_point"], [p + "_acc"]),
        node("Cast", [p + "_acc"], [p + "_accf"], to=TensorProto.FLOAT),
        node("Mul", [p + "_accf", scale], [p + "_y"]),
        node("Mul", [p + "_y", p + "_wscale"], [out]),
    ]
    return nodes, inits


def quantize_per_token(src: Path, dst: Path) -> None:
    """Write ``dst``: ``src`` with every weight MatMul quantized per token x per channel.

    An activation feeding several MatMuls (attention's Q, K and V) is quantized once.
    """
    model = onnx.load(str(src))
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = [numpy_helper.from_array(v, k) for k, v in _CONSTANTS.items()]
    quantized: dict[str, tuple[str, str]] = {}  # activation -> (codes, scales)
    replaced: set[str] = set()
    for nd in graph.node:
        w = weights.get(nd.input[1]) if nd.op_type == "MatMul" else None
        if w is None or len(w.dims) != 2:
            nodes.append(nd)
            continue
        x = nd.input[0]
        if x not in quantized:
            q_nodes, codes, scale = _quantize_activation(x)
            nodes.extend(q_nodes)
            quantized[x] = (codes, scale)
        new_nodes, new_inits = _quantized_matmul(
            nd.name or nd.output[0], *quantized[x], nd.output[0], numpy_helper.to_array(w)
        )
        nodes.extend(new_nodes)
        added.extend(new_inits)
        replaced.add(w.name)
    if not replaced:
        raise ValueError(f"{src}: no weight MatMul to quantize")
    still_used = {i for nd in nodes for i in nd.input}
    kept = [t for t in graph.initializer if t.name not in replaced or t.name in still_used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    onnx.save(model, str(dst))


def quantize_ort_dynamic(src: Path, dst: Path) -> None:
    """Write ``dst`` with onnxruntime's quantize_dynamic (per-tensor activations)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src), load_external_data=False)
    weights = {t.name for t in model.graph.initializer}
    activation_matmuls = [
        nd.name
        for nd in model.graph.node
        if nd.op_type == "MatMul" and not any(i in weights for i in nd.input)
    ]
    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=True,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=activation_matmuls,
    )


QUANTIZERS: dict[str, Callable[[Path, Path], None]] = {
    "per_token": quantize_per_token,
    "ort_dynamic": quantize_ort_dynamic,
}

// Python bindings for every native CPU kernel (declared in kernels.h). Built with
// TESSERA_BLOCK_LINEAR_ONLY it binds block_linear alone: the per-instruction-set builds the
// tests make (engine.kernels.load_block_linear_variant).
#include "kernels.h"

// Every kernel lets go of the GIL while it runs: they touch no Python object, and holding it
// kept the serving thread (SSE chunks, HTTP) waiting up to the 5 ms switch interval behind
// each engine step, twice a token.
using NoGil = py::call_guard<py::gil_scoped_release>;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack_block_weight", &pack_block_weight, NoGil(),
        "q [n, k] (uint8 0..15 for 4 bits, int8 for 8 bits) -> the packed layout block_linear reads");
  m.def("block_linear", &block_linear, NoGil(), py::arg("x"), py::arg("packed"), py::arg("d"),
        py::arg("m"), py::arg("n"), py::arg("bits"),
        "x [rows, k] float32 @ (d * q + m).T over blocks of 32 -> [rows, n] float32, x quantized "
        "to int16 per row and block");
  m.def("block_linear_reference", &block_linear_reference, NoGil(), py::arg("x"), py::arg("packed"),
        py::arg("d"), py::arg("m"), py::arg("n"), py::arg("bits"),
        "block_linear in scalar code, the same arithmetic in the same order");
  m.def("block_linear_isa", &block_linear_isa, NoGil(), "the instruction path block_linear was built with");
#ifndef TESSERA_BLOCK_LINEAR_ONLY
  m.def("paged_decode_attention", &paged_decode_attention, NoGil(), py::arg("q"),
        py::arg("k_cache"), py::arg("v_cache"), py::arg("block_tables"), py::arg("context_lens"),
        py::arg("scale"), py::arg("window") = 0,
        "Decode attention over a paged KV pool (CPU, float32); window > 0: its last keys only");
  m.def("rope_in_place", &rope_in_place, NoGil(),
        "rotate the first heads of qkv [tokens, heads, head_dim] in place (half-split RoPE)");
  m.def("store_kv", &store_kv, NoGil(), "write K, V [tokens, kv_heads, head_dim] at their pool slots");
  m.def("silu_and_mul", &silu_and_mul, NoGil(),
        "gate_up [rows, 2 * inter] float32 -> silu(gate) * up [rows, inter]");
  m.def("small_batch_linear", &small_batch_linear, NoGil(),
        "x [rows <= 4, k] float32 @ w [n, k].T, streaming each weight row once");
  m.def("rms_norm", &rms_norm, NoGil(), "x [rows, n] float32 * rsqrt(mean(x^2) + eps) * weight [n]");
  py::class_<BlockDecodeStack>(m, "BlockDecodeStack",
                               "every decoder layer of a decode-only step over weight blocks")
      .def(py::init<int64_t, int64_t, int64_t, double>(), py::arg("heads"), py::arg("kv_heads"),
           py::arg("head_dim"), py::arg("eps"))
      .def("add_layer", &BlockDecodeStack::add_layer, py::arg("qkv"), py::arg("o"),
           py::arg("gate_up"), py::arg("down"), py::arg("input_norm"),
           py::arg("post_attention_norm"),
           "append a layer: each projection as (packed, d, m, n, bits)")
      .def("forward", &BlockDecodeStack::forward, NoGil(), py::arg("h"), py::arg("cos"),
           py::arg("sin"), py::arg("k_caches"), py::arg("v_caches"), py::arg("slots"),
           py::arg("block_tables"), py::arg("context_lens"),
           "h [sequences, hidden] through every layer, one new token per sequence")
      .def_property_readonly("num_layers", &BlockDecodeStack::num_layers);
#endif
}

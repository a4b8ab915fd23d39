// Python bindings for every native CPU kernel (declared in kernels.h).
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention,
        "Decode attention over a paged KV pool (CPU, float32)");
  m.def("pack_int8_weight", &pack_int8_weight,
        "w [n, k] int8 -> the packed layout int8_linear reads");
  m.def("int8_linear", &int8_linear,
        "x [rows, k] float32 @ (packed int8 weight * w_scales [n]).T -> [rows, n] float32, "
        "x quantized to int8 per row and block of 64 channels");
  m.def("rope_in_place", &rope_in_place,
        "rotate the first heads of qkv [tokens, heads, head_dim] in place (half-split RoPE)");
  m.def("store_kv", &store_kv, "write K, V [tokens, kv_heads, head_dim] at their pool slots");
  m.def("silu_and_mul", &silu_and_mul,
        "gate_up [rows, 2 * inter] float32 -> silu(gate) * up [rows, inter]");
  m.def("small_batch_linear", &small_batch_linear,
        "x [rows <= 4, k] float32 @ w [n, k].T, streaming each weight row once");
  m.def("rms_norm", &rms_norm, "x [rows, n] float32 * rsqrt(mean(x^2) + eps) * weight [n]");
}

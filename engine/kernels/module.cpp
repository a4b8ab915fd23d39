// Python bindings for every native CPU kernel (declared in kernels.h).
#include "kernels.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode_attention", &paged_decode_attention,
        "Decode attention over a paged KV pool (CPU, float32)");
  m.def("quantize_rows", &quantize_rows,
        "x [rows, k] float32 -> (int8 [rows, k], scales [rows, 1]), x ~= q * scale");
  m.def("dequantize_rows", &dequantize_rows,
        "acc [rows, n] int32 * row_scales [rows, 1] * col_scales [n] -> float32");
  m.def("silu_and_mul", &silu_and_mul,
        "gate_up [rows, 2 * inter] float32 -> silu(gate) * up [rows, inter]");
  m.def("rms_norm", &rms_norm, "x [rows, n] float32 * rsqrt(mean(x^2) + eps) * weight [n]");
}

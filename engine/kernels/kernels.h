// The native CPU kernels of engine/kernels, one extension module (module.cpp binds them).
#pragma once

#include <torch/extension.h>

#include <tuple>

// Decode attention over a paged KV pool (float32); paged_decode_attention.cpp.
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache,
                                     torch::Tensor v_cache, torch::Tensor block_tables,
                                     torch::Tensor context_lens, double scale);

// Per-row symmetric int8 quantization of float32 activations; int8_rows.cpp.
std::tuple<torch::Tensor, torch::Tensor> quantize_rows(torch::Tensor x);

// int32 products back to float32 with one scale per row and one per column; int8_rows.cpp.
torch::Tensor dequantize_rows(torch::Tensor acc, torch::Tensor row_scales,
                              torch::Tensor col_scales);

// RMSNorm over the last dimension of float32 rows; rms_norm.cpp.
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps);

// silu(gate) * up of a fused [rows, 2 * inter] gate/up output (float32); silu_and_mul.cpp.
torch::Tensor silu_and_mul(torch::Tensor gate_up);

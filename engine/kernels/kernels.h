// The native CPU kernels of engine/kernels, one extension module (module.cpp binds them).
#pragma once

#include <torch/extension.h>

// Decode attention over a paged KV pool (float32); paged_decode_attention.cpp.
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache,
                                     torch::Tensor v_cache, torch::Tensor block_tables,
                                     torch::Tensor context_lens, double scale);

// An int8 weight [n, k] (one scale per output channel) in int8_linear's layout;
// int8_linear.cpp.
torch::Tensor pack_int8_weight(torch::Tensor w);

// float32 rows times a packed int8 weight, the rows quantized to int8 on the fly (one scale
// per row and block of 64 input channels), int32 dot products; int8_linear.cpp.
torch::Tensor int8_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor w_scales);

// Rotate the first `heads` heads of qkv [tokens, heads, head_dim] in place (half-split RoPE,
// cos and sin [tokens, head_dim]); rope_and_kv.cpp.
void rope_in_place(torch::Tensor qkv, torch::Tensor cos, torch::Tensor sin, int64_t heads);

// Write this step's K and V [tokens, kv_heads, head_dim] into the paged pools at their flat
// slots; rope_and_kv.cpp.
void store_kv(torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots, torch::Tensor k,
              torch::Tensor v);

// float32 x [rows <= 4, k] @ w.T for a plain weight [n, k]: memory-bound decode GEMV;
// small_batch_linear.cpp.
torch::Tensor small_batch_linear(torch::Tensor x, torch::Tensor w);

// RMSNorm over the last dimension of float32 rows; rms_norm.cpp.
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor weight, double eps);

// silu(gate) * up of a fused [rows, 2 * inter] gate/up output (float32); silu_and_mul.cpp.
torch::Tensor silu_and_mul(torch::Tensor gate_up);

// The native CPU kernels of engine/kernels, one extension module (module.cpp binds them).
#pragma once

#include <torch/extension.h>

// Decode attention over a paged KV pool (float32), over the last `window` keys when window > 0
// (sliding layers); paged_decode_attention.cpp.
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k_cache,
                                     torch::Tensor v_cache, torch::Tensor block_tables,
                                     torch::Tensor context_lens, double scale, int64_t window);

// Block weights q [n, k] (4 bits: uint8 values 0..15; 8 bits: int8) in block_linear's layout;
// block_linear.cpp.
torch::Tensor pack_block_weight(torch::Tensor q, int64_t bits);

// float32 rows times packed block weights (scale d and, for 4 bits, minimum m per block of 32,
// packed [panels, blocks, 8]), the rows quantized to int16 per block, int32 dot products;
// block_linear.cpp. The reference is the same arithmetic in scalar code (tests compare them).
torch::Tensor block_linear(torch::Tensor x, torch::Tensor packed, torch::Tensor d,
                           c10::optional<torch::Tensor> m, int64_t n, int64_t bits);
torch::Tensor block_linear_reference(torch::Tensor x, torch::Tensor packed, torch::Tensor d,
                                     c10::optional<torch::Tensor> m, int64_t n, int64_t bits);
// Which instruction path block_linear was compiled with: avx512_vnni, avx_vnni, avx2, portable.
std::string block_linear_isa();

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

// One projection over weight blocks, as block_linear takes it: packed, d, m, n, bits.
using BlockProjection =
    std::tuple<torch::Tensor, torch::Tensor, c10::optional<torch::Tensor>, int64_t, int64_t>;

// Every decoder layer of a decode-only step in one call, for the model over weight blocks
// (RMSNorm, fused QKV, RoPE, paged K/V write and decode attention, o, SwiGLU MLP): the same
// kernels, in the same order, as the Python layer loop; decode_stack.cpp.
class BlockDecodeStack {
 public:
  BlockDecodeStack(int64_t heads, int64_t kv_heads, int64_t head_dim, double eps)
      : heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), eps_(eps) {}
  // Appends the next layer's weights (norm weights float32 [hidden]).
  void add_layer(BlockProjection qkv, BlockProjection o, BlockProjection gate_up,
                 BlockProjection down, torch::Tensor input_norm,
                 torch::Tensor post_attention_norm);
  // h [sequences, hidden] after the embedding -> h after the last layer (before the final
  // norm); cos, sin [sequences, head_dim]; one K and V pool per layer; each sequence's slot,
  // block table and context length (this token included).
  torch::Tensor forward(torch::Tensor h, torch::Tensor cos, torch::Tensor sin,
                        const std::vector<torch::Tensor>& k_caches,
                        const std::vector<torch::Tensor>& v_caches, torch::Tensor slots,
                        torch::Tensor block_tables, torch::Tensor context_lens) const;
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

 private:
  struct Layer {
    BlockProjection qkv, o, gate_up, down;
    torch::Tensor input_norm, post_attention_norm;
  };
  static torch::Tensor linear(const BlockProjection& p, const torch::Tensor& x);
  int64_t heads_, kv_heads_, head_dim_;
  double eps_;
  std::vector<Layer> layers_;
};

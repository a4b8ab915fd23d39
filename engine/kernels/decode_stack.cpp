// Every decoder layer of a decode-only step (one new token per sequence) in one native call,
// for the model over weight blocks (torch int8). The layer loop in Python made about 17 calls
// a layer, 510 a step, each paying the interpreter, pybind and the GIL: at one sequence that
// overhead was about half of a step. Here the same kernels run in the same order on the same
// tensors, so the result equals the Python loop's bit for bit (tests pin it), and the GIL is
// released for the whole stack, not per kernel.
#include "kernels.h"

#include <cmath>

void BlockDecodeStack::add_layer(BlockProjection qkv, BlockProjection o, BlockProjection gate_up,
                                 BlockProjection down, torch::Tensor input_norm,
                                 torch::Tensor post_attention_norm) {
  TORCH_CHECK(std::get<3>(qkv) == (heads_ + 2 * kv_heads_) * head_dim_,
              "qkv projection width must be (heads + 2 kv heads) x head_dim");
  TORCH_CHECK(std::get<3>(o) == input_norm.numel() && std::get<3>(down) == input_norm.numel(),
              "o and down projections must write the hidden size");
  layers_.push_back(Layer{std::move(qkv), std::move(o), std::move(gate_up), std::move(down),
                          input_norm.contiguous(), post_attention_norm.contiguous()});
}

torch::Tensor BlockDecodeStack::forward(torch::Tensor h, torch::Tensor cos, torch::Tensor sin,
                                        const std::vector<torch::Tensor>& k_caches,
                                        const std::vector<torch::Tensor>& v_caches,
                                        torch::Tensor slots, torch::Tensor block_tables,
                                        torch::Tensor context_lens) const {
  const int64_t layers = static_cast<int64_t>(layers_.size());
  TORCH_CHECK(static_cast<int64_t>(k_caches.size()) == layers &&
                  static_cast<int64_t>(v_caches.size()) == layers,
              "one K and one V pool per layer");
  TORCH_CHECK(h.scalar_type() == torch::kFloat32 && h.dim() == 2,
              "h must be [sequences, hidden] float32");
  const int64_t n = h.size(0);
  // As Python's head_dim ** -0.5 (C pow), so the scale is the Python loop's to the bit.
  const double scale = std::pow(static_cast<double>(head_dim_), -0.5);
  h = h.clone(torch::MemoryFormat::Contiguous);  // [n, hidden], updated in place below
  for (int64_t i = 0; i < layers; ++i) {
    const Layer& layer = layers_[i];
    // Attention: norm, fused QKV, RoPE on Q and K (adjacent heads), K/V into the pool.
    auto qkv = linear(layer.qkv, rms_norm(h, layer.input_norm, eps_))
                   .view({n, heads_ + 2 * kv_heads_, head_dim_});  // [n, q+2kv heads, hd]
    rope_in_place(qkv, cos, sin, heads_ + kv_heads_);
    auto q = qkv.narrow(1, 0, heads_);
    store_kv(k_caches[i], v_caches[i], slots, qkv.narrow(1, heads_, kv_heads_),
             qkv.narrow(1, heads_ + kv_heads_, kv_heads_));
    auto attn = paged_decode_attention(q, k_caches[i], v_caches[i], block_tables, context_lens,
                                       scale, /*window=*/0);  // [n, heads, hd]
    h.add_(linear(layer.o, attn.view({n, heads_ * head_dim_})));
    // SwiGLU MLP.
    auto gate_up = linear(layer.gate_up, rms_norm(h, layer.post_attention_norm, eps_));
    h.add_(linear(layer.down, silu_and_mul(gate_up)));
  }
  return h;
}

torch::Tensor BlockDecodeStack::linear(const BlockProjection& p, const torch::Tensor& x) {
  return block_linear(x, std::get<0>(p), std::get<1>(p), std::get<2>(p), std::get<3>(p),
                      std::get<4>(p));
}

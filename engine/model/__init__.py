"""The decoder, written once for paged attention, and its layers (attention, RoPE, weights)."""

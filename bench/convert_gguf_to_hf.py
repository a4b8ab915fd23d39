"""Write a Hugging Face folder (config, safetensors, tokenizer) from a Llama-family GGUF, for
servers that cannot load the GGUF themselves (`transformers serve`).

    bench/.venv-peers/bin/python bench/convert_gguf_to_hf.py MODEL.gguf OUT_DIR

transformers dequantizes the GGUF on load but refuses to save that model ("quantized with
gguf"), and leaves config.architectures empty, which `transformers serve` needs. So the
weights move into a plain LlamaForCausalLM built from the same config.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    src = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = src.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(LlamaConfig(**config)).float()
    model.load_state_dict(src.state_dict())
    model.generation_config = src.generation_config
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # complete folders only: a crash leaves .tmp, never a half-written out


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
    print(sys.argv[2])

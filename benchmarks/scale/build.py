"""A Llama-architecture model larger than the memory cap, built block by block with seeded random weights.

The model is built on the meta device (nothing allocated); each block's tensors are drawn from a generator seeded
by the tensor's name and written to its own safetensors shard with a Hugging Face index, so building it never holds
more than one block, and ``from_pretrained`` (the in-memory run) reads the same folder. The byte tokenizer of the
tiny test models goes beside it, so the folder has a causal-LM task.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

# 76 blocks of 7.08 M parameters (28 MB): 2.15 GB of float32, 3.1x a 700 MB cap. Blocks this size leave room
# under the cap for what a process holds besides weights (torch, transformers and the task: about 440 MB) and for a
# method's working copies (Wanda: the sparse layers beside the originals, scores; GPTQ: Hessians and their inverses)
CONFIG = dict(vocab_size=257, hidden_size=768, intermediate_size=2048, num_hidden_layers=76, num_attention_heads=6,
              num_key_value_heads=6, max_position_embeddings=128, bos_token_id=0, eos_token_id=0, pad_token_id=0,
              tie_word_embeddings=False, rms_norm_eps=1e-5)


def _seed(name: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _tensor(name: str, ref: torch.Tensor, seed: int) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(ref.shape, dtype=torch.float32)
    g = torch.Generator().manual_seed(_seed(name, seed))
    return torch.empty(ref.shape, dtype=torch.float32).normal_(0.0, 0.02, generator=g)


def build(folder: Path, seed: int = 0, **overrides) -> Path:
    """Write the model folder (idempotent: a complete folder is kept)."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from torchslim.core.surgery import meta_parameters
    from torchslim.zoo.tiny import EOS, byte_tokenizer

    folder = Path(folder)
    if (folder / "model.safetensors.index.json").is_file():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(**{**CONFIG, **overrides})
    config.architectures = ["LlamaForCausalLM"]
    with meta_parameters():
        model = LlamaForCausalLM(config)
    names = list(model.state_dict())
    groups: dict[str, list[str]] = {}
    for n in names:
        key = ".".join(n.split(".")[:3]) if n.startswith("model.layers.") else "outside"
        groups.setdefault(key, []).append(n)
    state = model.state_dict()
    index, total = {}, 0
    for i, (key, members) in enumerate(groups.items()):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: _tensor(n, state[n], seed) for n in members}
        save_file(tensors, str(tmp / file), metadata={"format": "pt"})
        total += sum(t.numel() * 4 for t in tensors.values())
        index.update({n: file for n in members})
        del tensors
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": index}, indent=1))
    config.save_pretrained(tmp)
    byte_tokenizer((EOS,)).save_pretrained(tmp)
    tmp.rename(folder)
    return folder


if __name__ == "__main__":
    import sys

    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/torchslim-scale/llama-2gb-v3")))

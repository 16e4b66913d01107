"""The variants the PEFT benchmark measures, built the same way in the parent process (interleaved step times)
and in the memory subprocesses: the base (SmolLM2 fp32, an int4 base, or a saved artifact such as the 25%-pruned
model), an adapter (torchslim's or peft's LoRA, or none for full fine-tuning), and one training step.

The hand-written step is the same code for torchslim and peft (zero_grad, the task's loss, backward, AdamW step
over the trainable parameters), so a difference in its time or memory is the adapter implementation's.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

LLAMA_QV = ["q_proj", "v_proj"]
LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tokenizer_of_smollm2() -> Any:
    from torchslim.zoo.hf import load_tokenizer
    from torchslim.zoo.smollm2 import ensure_cache

    return load_tokenizer(ensure_cache())


def load_base(spec: dict[str, Any]) -> torch.nn.Module:
    """SmolLM2 fp32 from the zoo's cached folder, or the torchslim artifact ``spec['artifact']`` (int4, pruned)."""
    import torchslim
    from torchslim.zoo.hf import load_pretrained
    from torchslim.zoo.smollm2 import ensure_cache

    model = torchslim.load(spec["artifact"]) if spec.get("artifact") else load_pretrained(ensure_cache(), causal=True)
    return model.eval()


def quantize_int4(model: torch.nn.Module) -> None:
    """int4 asymmetric groups of 128 by round to nearest, the head int8 per channel: the int4-qlora recipe's
    layers and formats (GPTQ there only chooses other values on the same grid: the same bytes in memory)."""
    import torchslim
    from torchslim import WeightOnlyConfig
    from torchslim.quantization import IntFormat, PerChannel, PerGroup

    head = WeightOnlyConfig(format=IntFormat(8), granularity=PerChannel())
    sel = torchslim.Selector(include=(torch.nn.Linear,), overrides={"lm_head": head})
    torchslim.quantize_(model, WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(128),
                                                selector=sel))


def torchslim_selector(targets: str) -> Any:
    """``qv``: q_proj + v_proj (BERT: query + value); ``all``: None, LoRA's default (every block linear layer)."""
    import torchslim

    if targets == "qv":
        return torchslim.Selector(include=("re:.*\\.(q_proj|v_proj|query|value)",))
    if targets == "all":
        return None
    raise SystemExit(f"error: unknown targets {targets!r}")


def add_torchslim_lora(model: torch.nn.Module, targets: str, r: int, alpha: float) -> dict[str, int]:
    """torchslim's LoraConfig.prepare (branches added, the base frozen); its own trainable count."""
    from torchslim import ApplyContext, LoraConfig

    rec = LoraConfig(r=r, alpha=alpha, selector=torchslim_selector(targets)).prepare(model, ApplyContext()).records[0]
    return {"trainable": rec["trainable_params"], "total": rec["total_params"]}


def add_peft_lora(model: torch.nn.Module, targets: str, r: int, alpha: float) -> tuple[torch.nn.Module, dict[str, int]]:
    import peft

    names = {"qv": LLAMA_QV, "all": LLAMA_ALL}[targets]
    pm = peft.get_peft_model(model, peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=names))
    trainable, total = pm.get_nb_trainable_parameters()
    return pm, {"trainable": trainable, "total": total}


def adapt(model: torch.nn.Module, spec: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, int]]:
    """Attach the spec's adapter: ``torchslim-lora``, ``peft-lora``, or ``full`` (every parameter trains)."""
    method = spec["method"]
    if method == "torchslim-lora":
        return model, add_torchslim_lora(model, spec["targets"], spec["r"], spec["alpha"])
    if method == "peft-lora":
        return add_peft_lora(model, spec["targets"], spec["r"], spec["alpha"])
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        n = sum(p.numel() for p in model.parameters())
        return model, {"trainable": n, "total": n}
    raise SystemExit(f"error: unknown method {method!r}")


def train_task(tokenizer: Any, seq: int) -> Any:
    from torchslim.tasks.causal_lm import CausalLMTask

    return CausalLMTask(tokenizer, seq_len=seq)


def batches(task: Any, batch: int, n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    it: Iterator[dict[str, torch.Tensor]] = task.train_batches(batch, seed=seed)
    return [next(it) for _ in range(n)]


def make_step(model: torch.nn.Module, task: Any, data: list[dict[str, torch.Tensor]], lr: float = 1e-4,
              optimizer: str = "adamw", bf16: bool = False, losses: list[float] | None = None) -> Callable[[], None]:
    """One optimizer step per call over the trainable parameters, cycling through ``data``. ``optimizer``:
    ``adamw`` (torch's) or ``lion`` (torchslim's); ``bf16``: the Trainer's bfloat16 autocast around the loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=lr)
    elif optimizer == "lion":
        from torchslim.train.optim import Lion

        opt = Lion(params, lr=lr)
    else:
        raise SystemExit(f"error: unknown optimizer {optimizer!r}")
    state = {"i": 0}
    model.train()

    def step() -> None:
        batch = data[state["i"] % len(data)]
        state["i"] += 1
        opt.zero_grad(set_to_none=True)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            loss = task.loss(model, batch).float()
        loss.backward()
        opt.step()
        if losses is not None:
            losses.append(float(loss))

    return step

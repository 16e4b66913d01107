"""Black-box (sequence-level) distillation for language models: the teacher is only a text generator, a
function from prompts to continuations (a larger local model, or any endpoint the user wraps). Its
generations on the prompts become the student's training text (Kim & Rush 2016, sequence-level KD).

``torchslim.distill_(student, BlackBoxDistillConfig(...), task=lm_task, teacher=generate)`` where
``generate(prompts: list[str]) -> list[str]``. Prompts come from a file (text: one per line; JSONL: the
``text`` field) or, by default, from the first sentences of the task's calibration text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from torch import nn

from torchslim.core.config import between
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError
from torchslim.core.registry import register_handler
from torchslim.train.transform import TRAINING_USES, Prepared, TrainingConfig, run_transform


@dataclass
class BlackBoxDistillConfig(TrainingConfig):
    family: ClassVar[str] = "distillation"
    prompts: str | None = None                       # a file of prompts; None: calibration-text sentences
    n_prompts: int = between(64, 1, 1 << 20)
    prompt_words: int = between(12, 1, 4096)         # default prompts: the first words of each sentence
    seq_len: int = between(128, 8, 1 << 16)
    batch_prompts: int = between(8, 1, 4096)         # prompts per call of the teacher
    # when the teacher is a model (a recipe's uncompressed model) rather than a function: how it generates
    max_new_tokens: int = between(96, 1, 1 << 16)
    temperature: float = between(0.8, 0.0, 10.0)     # 0: greedy
    top_p: float = between(0.95, 0.01, 1.0)
    seed: int = between(0, 0, 2**63 - 1)

    def needs_teacher(self) -> bool:
        return True

    def prepare(self, model: nn.Module, ctx: ApplyContext) -> Prepared:
        task = ctx.training_task
        tokenizer = getattr(task, "tokenizer", None)
        if tokenizer is None or not hasattr(task, "train_batches"):
            raise ConfigError("black-box distillation trains a language model: pass task=<a causal LM task>")
        teacher = ctx.teacher
        if isinstance(teacher, nn.Module):
            teacher = model_generator(teacher, tokenizer, self)
        if not callable(teacher):
            raise ConfigError("black-box distillation needs teacher=<a function from a list of prompts to texts, or a "
                              "generating language model>")
        prompts = self._prompts(task)
        texts = generate(teacher, prompts, self.batch_prompts)
        from torchslim.tasks.causal_lm import CausalLMTask

        corpus = CausalLMTask(tokenizer, seq_len=self.seq_len, calibration_text="\n\n".join(texts))
        n_tokens = int(corpus.token_ids("calibration").numel())
        if n_tokens < self.seq_len:
            raise ConfigError(f"the teacher's generations hold {n_tokens} tokens, fewer than seq_len={self.seq_len}")
        prepared = Prepared(train_data=corpus.train_batches, teacher=None)
        prepared.records.append({"prompts": len(prompts), "generated_tokens": n_tokens})
        return prepared

    def _prompts(self, task: Any) -> list[str]:
        if self.prompts is not None:
            from torchslim.data.user import read_user_data

            data = read_user_data(self.prompts)
            lines = [ln.strip() for t in data.texts for ln in (t.splitlines() if len(data.texts) == 1 else [t])]
            found = [ln for ln in lines if ln]
        else:
            from torchslim.data.text import split_sentences

            text = task.text("calibration") if hasattr(task, "text") else ""
            found = [" ".join(s.split()[: self.prompt_words]) for s in split_sentences(text)]
        if not found:
            raise ConfigError("black-box distillation found no prompts")
        return found[: self.n_prompts]


def model_generator(model: nn.Module, tokenizer: Any, cfg: BlackBoxDistillConfig) -> Callable[[list[str]], list[str]]:
    """A local language model as a text generator (``model.generate``, seeded sampling or greedy): only its
    text is used, as from any other generator."""
    import torch

    if not callable(getattr(model, "generate", None)):
        raise ConfigError(f"a teacher {type(model).__name__} cannot generate text: pass a function from prompts to texts")
    device = next(model.parameters()).device
    asked = [0]

    def run(prompts: list[str]) -> list[str]:
        out, was = [], model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.inference_mode():
                for prompt in prompts:
                    torch.manual_seed(cfg.seed + asked[0])
                    asked[0] += 1
                    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)
                    kw = ({"do_sample": True, "temperature": cfg.temperature, "top_p": cfg.top_p}
                          if cfg.temperature > 0 else {"do_sample": False})
                    gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=cfg.max_new_tokens,
                                         pad_token_id=tokenizer.eos_token_id, **kw)
                    out.append(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
        finally:
            model.train(was)
        return out

    return run


def generate(teacher: Callable[[list[str]], list[str]], prompts: list[str], batch: int) -> list[str]:
    """``prompt + continuation`` for every prompt, asking the teacher ``batch`` prompts at a time."""
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        got = teacher(chunk)
        if not isinstance(got, (list, tuple)) or len(got) != len(chunk) or not all(isinstance(g, str) for g in got):
            raise ConfigError(f"the teacher must return one string per prompt; for {len(chunk)} prompts it returned "
                              f"{type(got).__name__}")
        out += [p + g for p, g in zip(chunk, got)]
    return out


@register_handler(BlackBoxDistillConfig, uses=TRAINING_USES, modifies="weights")
def _blackbox(model: nn.Module, config: BlackBoxDistillConfig, ctx: ApplyContext) -> nn.Module:
    return run_transform(model, config, ctx)

"""Parameter-efficient fine-tuning benchmark (issue 20): torchslim's adapters against Hugging Face peft on
SmolLM2-135M (and MiniLM for the parameter counts and interop), QLoRA's memory, and LoRA recovery after 25%
structured pruning.

Parts (``--parts``; each can be run and re-run alone, its rows merge into docs/results/peft_smollm2.json and the
Markdown table is regenerated from all parts measured so far):
- ``params``: trainable-parameter counts, torchslim against peft, for LoRA r=8 on q,v (query,value), IA3 with the
  defaults, prompt tuning with 20 virtual tokens; MiniLM and SmolLM2.
- ``speed``: LoRA r=8 on q,v and on all block linears: step time (interleaved, one process) and peak memory (own
  subprocess each), torchslim against peft, batch 4 x 256, AdamW.
- ``qlora``: peak training memory of LoRA on the fp32 base against QLoRA on an int4 base (with and without
  gradient checkpointing).
- ``structured``: 25% structured pruning, then LoRA recovery against full fine-tuning at equal steps, perplexity on
  GPL-3 and on the Python reference text.
- ``optim``: that LoRA recovery with AdamW / Lion and fp32 / bf16 autocast: time, memory, quality.
- ``interop``: a torchslim LoRA adapter in peft and a peft one in torchslim, outputs compared.

    python benchmarks/peft/smollm2.py [--parts params qlora speed structured optim interop] [--steps N] ...
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.peft import adapters, harness, structured  # noqa: E402

warnings.filterwarnings("ignore")
ORDER = ["params", "speed", "qlora", "structured", "optim", "interop"]
TITLES = {"params": "trainable parameters, torchslim against peft",
          "speed": "LoRA step time and peak memory, torchslim against peft",
          "qlora": "QLoRA on an int4 base against LoRA on the fp32 base: peak training memory",
          "structured": "LoRA recovery against full fine-tuning after 25% structured pruning",
          "optim": "AdamW against Lion, fp32 against bf16 autocast, on the LoRA recovery",
          "interop": "adapters through peft's format, both ways"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="*", default=["params", "qlora", "speed", "structured", "optim", "interop"])
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process (default 1: on a shared 2-core machine 2 threads measured "
                         "3.5x slower than 1 under load, OpenMP threads waiting on each other)")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds (speed, optim)")
    ap.add_argument("--speed-seq", type=int, default=256)
    ap.add_argument("--qlora-steps", type=int, default=2)
    ap.add_argument("--memory-repeats", type=int, default=3,
                    help="memory runs per variant (speed; qlora: those with the default allocator)")
    ap.add_argument("--steps", type=int, default=100, help="recovery steps (structured, optim)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128, help="recovery training sequence length")
    ap.add_argument("--lora-r", type=int, default=8)
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--extra-lora-lrs", type=float, nargs="*", default=[5e-4],
                    help="more LoRA learning rates in the structured table (rows the target check does not use)")
    ap.add_argument("--ft-lrs", type=float, nargs="+", default=[5e-5, 2e-4],
                    help="full fine-tuning learning rates (the target check compares LoRA with the best of them)")
    ap.add_argument("--eval-windows", type=int, default=None, help="cap the perplexity windows (smoke runs only)")
    ap.add_argument("--out", type=Path, default=harness.OUT, help="the Markdown table (its .json beside it)")
    args = ap.parse_args()
    harness.set_output(args.out)
    import torch

    torch.set_num_threads(args.threads)
    for part in args.parts:
        if part not in ORDER:
            raise SystemExit(f"error: unknown part {part!r} (parts: {', '.join(ORDER)})")
    t_all = time.perf_counter()
    for part in args.parts:
        t = time.perf_counter()
        harness.say(f"part {part}: start")
        if part == "params":
            section = adapters.part_params()
        elif part == "speed":
            section = adapters.part_speed(args.threads, args.rounds, seq=args.speed_seq, repeats=args.memory_repeats)
        elif part == "qlora":
            section = adapters.part_qlora(args.threads, steps=args.qlora_steps, seq=args.speed_seq,
                                         repeats=args.memory_repeats)
        elif part == "structured":
            section = structured.part_structured(args)
        elif part == "optim":
            section = structured.part_optim(args)
        else:
            section = adapters.part_interop()
        cache = harness.store_part(part, section, time.perf_counter() - t)
        harness.write_markdown(cache, ORDER, TITLES, "python benchmarks/peft/smollm2.py --parts PART...")
        harness.say(f"part {part}: done in {time.perf_counter() - t:.0f} s")
    harness.say(f"parts {args.parts} took {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()

"""Self-speculative greedy decoding on SmolLM2-135M (30 blocks): drafts from the model's first blocks (its own final
norm and LM head, no extra weights) checked by the full model, against plain greedy decoding on the decode path
(torchslim.runtime.decode.FastDecoder, dynamic KV cache, float32). Prompts: the first 64 tokens of two texts of
different domains (GPL-3, the license evaluation text; the held-out Python reference topics). Writes
docs/results/early_exit_smollm2.md (+ .json). Run under ``flock /tmp/torchslim-bench.lock``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RES, interleaved, machine_line, say  # noqa: E402

import torchslim  # noqa: E402
from torchslim.data.text import split_text  # noqa: E402
from torchslim.early_exit.speculative import SelfSpeculativeDecoder  # noqa: E402
from torchslim.runtime.decode import FastDecoder  # noqa: E402

SWEEP = [(e, k) for e in (8, 15, 22) for k in (2, 4)]
PROMPTS = {"GPL-3": "eval", "Python reference": "pydoc-eval"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    loaded = torchslim.load_model("smollm2-135m")
    model, tok = loaded.model.eval(), loaded.tokenizer
    prompts = {name: tok(split_text(split), return_tensors="pt")["input_ids"][:, :64] for name, split in PROMPTS.items()}
    plain = FastDecoder(model, max_len=256)
    ref = {n: plain.generate(p, args.new)[0] for n, p in prompts.items()}
    sweep = []
    for e, k in SWEEP:
        dec = SelfSpeculativeDecoder(model, e, k)
        acc, same = [], True
        for n, p in prompts.items():
            out, st = dec.generate(p, args.new)
            acc.append(st.acceptance)
            same &= torch.equal(out, ref[n])
        sweep.append({"exit_layer": e, "draft_tokens": k, "acceptance": acc, "identical": same})
        say(f"exit {e} k {k}: acceptance {[f'{a:.2f}' for a in acc]}, identical {same}")
    best = sorted(sweep, key=lambda r: -(sum(r["acceptance"]) / len(r["acceptance"])) * (1 - r["exit_layer"] / 30))
    timed = [(r["exit_layer"], r["draft_tokens"]) for r in best[:2]]
    if not args.rounds:                      # acceptance and identity only (no timing, no lock)
        return write(sweep, [], args)
    fns = {"plain greedy": lambda: [plain.generate(p, args.new) for p in prompts.values()]}
    for e, k in timed:
        dec = SelfSpeculativeDecoder(model, e, k)
        fns[f"self-speculative, exit {e}, {k} drafts"] = lambda d=dec: [d.generate(p, args.new) for p in prompts.values()]
    with torch.inference_mode():
        secs = interleaved(fns, rounds=args.rounds)
    tokens = args.new * len(prompts)
    rows = [{"variant": n, "seconds": s, "tokens_per_s": tokens / s, "speedup": secs["plain greedy"] / s}
            for n, s in secs.items()]
    write(sweep, rows, args)


def write(sweep: list[dict], rows: list[dict], args: argparse.Namespace) -> None:
    lines = ["# Early exit for a decoder: self-speculative decoding on SmolLM2-135M", "",
             f"Drafts from the first blocks of SmolLM2-135M (its own final norm and LM head; no trained exit), "
             f"checked by the full model in one forward; greedy, {args.new} new tokens after each of two 64-token "
             f"prompts ({', '.join(PROMPTS)}), float32, against plain greedy decoding on the decode path "
             f"(FastDecoder). " + (f"Times interleaved, medians of {args.rounds} rounds." if args.rounds else "Not timed."), "",
             f"Machine: {machine_line()}, {torch.get_num_threads()} threads", "",
             "| exit block | drafts per check | acceptance (GPL-3, Python ref.) | output identical to plain greedy |",
             "|---|---|---|---|"]
    lines += [f"| {r['exit_layer']} | {r['draft_tokens']} | {', '.join(f'{a:.2f}' for a in r['acceptance'])} | "
              f"{'yes' if r['identical'] else 'NO'} |" for r in sweep]
    if rows:
        lines += ["", "| variant | median s (both prompts) | tokens/s | speed-up |", "|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['seconds']:.2f} | {r['tokens_per_s']:.1f} | {r['speedup']:.2f}x |"
                  for r in rows]
        lines += ["", "- the two timed settings are the sweep's best by acceptance x share of blocks skipped", ""]
    else:
        lines += ["", "Not timed in this run (acceptance and identity only; `--rounds 0`).", ""]
    path = RES / "early_exit_smollm2.md"
    path.write_text("\n".join(lines))
    path.with_suffix(".json").write_text(json.dumps({"sweep": sweep, "rows": rows, "machine": machine_line()}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

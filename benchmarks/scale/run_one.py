"""One compression run in its own process, for the scale benchmarks: in memory or onloaded, GPTQ int4 or Wanda 50%.

Prints one JSON line: seconds, the process's peak resident set (``VmHWM``), the SHA-256 of the written weights file,
and the onloading figures. The parent runs it under a memory cap (a cgroup) and compares the outputs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def config(method: str, n_samples: int):
    from torchslim.pruning import UnstructuredConfig
    from torchslim.quantization.gptq import GPTQConfig

    if method == "gptq":
        return GPTQConfig(n_samples=n_samples)          # int4 asymmetric, groups of 128, act-order (defaults)
    return UnstructuredConfig(sparsity=0.5, importance="wanda", n_samples=n_samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("memory", "memory-bounded", "onload"), required=True,
                    help="memory-bounded: in memory under the heap policy onloading uses (runtime.allocator.bounded_heap)")
    ap.add_argument("--method", choices=("gptq", "wanda"), required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-samples", type=int, default=4)
    ap.add_argument("--max-memory", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    import torchslim
    from torchslim.core.io import sha256
    from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: F401 - the baseline includes the model code

    cfg = config(args.method, args.n_samples)
    base = peak_rss()
    t0 = time.perf_counter()
    extra = {}
    if args.mode.startswith("memory"):
        from contextlib import nullcontext

        from torchslim.runtime.allocator import bounded_heap

        with bounded_heap() if args.mode == "memory-bounded" else nullcontext():
            loaded = torchslim.load_model(args.model)
            torchslim.apply_(loaded.model, cfg, task=loaded.task)
            torchslim.save(loaded.model, args.out, source=loaded.source)
    else:
        from torchslim.scale.onload import compress_onloaded

        _, stats = compress_onloaded(args.model, cfg, args.out, max_memory=args.max_memory)
        extra = {"onload": vars(stats), "onload_line": stats.line()}
    seconds = time.perf_counter() - t0
    print(json.dumps({"mode": args.mode, "method": args.method, "seconds": seconds, "peak_rss": peak_rss(),
                      "rss_after_imports": base, "sha256": sha256(Path(args.out) / "model.safetensors"),
                      "threads": args.threads, **extra}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

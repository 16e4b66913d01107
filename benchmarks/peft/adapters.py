"""The PEFT benchmark's adapter parts: ``params`` (trainable counts against peft), ``speed`` (step time and
peak memory against peft), ``qlora`` (int4 base against fp32 base) and ``interop`` (outputs through peft's
format both ways). Each returns its section (columns, rows, notes) for harness.store_part."""
from __future__ import annotations

import copy
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import interleaved
from benchmarks.peft import variants
from benchmarks.peft.harness import run_worker, say, work_dir

VIRTUAL_TOKENS = 20
MMAP_1MIB = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}   # glibc: blocks >= 1 MiB mmapped, returned to the OS on free


# -- params -------------------------------------------------------------------------------------------------------
def _models() -> dict[str, tuple[Any, str]]:
    """name -> (a function building a fresh base, peft task type for the virtual-token methods)."""
    import torchslim

    mini = torchslim.load_model("minilm").model.eval()
    return {"MiniLM (all-MiniLM-L6-v2)": (lambda: copy.deepcopy(mini), "FEATURE_EXTRACTION"),
            "SmolLM2-135M": (lambda: variants.load_base({}), "CAUSAL_LM")}


def _cases(model_name: str, task_type: str) -> list[tuple[str, Any, Any]]:
    """(label, torchslim config, peft config) of each method, the same settings on both sides."""
    import peft

    from torchslim.peft import IA3Config, LoraConfig, PrefixTuningConfig, PromptTuningConfig

    mini = model_name.startswith("MiniLM")
    names = ["query", "value"] if mini else variants.LLAMA_QV
    n = VIRTUAL_TOKENS
    return [(f"LoRA r=8 on {', '.join(names)}", LoraConfig(r=8, alpha=16, selector=variants.torchslim_selector("qv")),
             peft.LoraConfig(r=8, lora_alpha=16, target_modules=names)),
            ("IA3, default layers", IA3Config(), peft.IA3Config()),
            (f"prompt tuning, {n} virtual tokens", PromptTuningConfig(n_virtual=n),
             peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=n)),
            (f"prefix tuning, {n} virtual tokens", PrefixTuningConfig(n_virtual=n),
             peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=n))]


def _ours(build: Any, config: Any) -> tuple[int | None, str]:
    from torchslim import ApplyContext

    try:
        rec = config.prepare(build(), ApplyContext()).records[0]
    except Exception as e:           # a method that fails on this model is a row saying so, not a crash
        return None, f"torchslim failed: {type(e).__name__}: {e}"
    return rec["trainable_params"], ""


def part_params() -> dict[str, Any]:
    import peft

    rows = []
    for model_name, (build, task_type) in _models().items():
        for label, ours_cfg, peft_cfg in _cases(model_name, task_type):
            say(f"params: {model_name}, {label}")
            theirs = peft.get_peft_model(build(), peft_cfg).get_nb_trainable_parameters()[0]
            ours, note = _ours(build, ours_cfg)
            rows.append({"name": f"{model_name}: {label}", "torchslim trainable": ours, "peft trainable": theirs,
                         "equal": None if ours is None else ("yes" if ours == theirs else "NO"), "note": note})
    return {"columns": ["torchslim trainable", "peft trainable", "equal"], "rows": rows,
            "intro": "Trainable parameters after attaching the same adapter: torchslim's own count (the record its "
                     "AdapterConfig.prepare writes) against peft's get_peft_model(...).get_nb_trainable_parameters(). "
                     "LoRA alpha 16, no dropout; IA3 with each library's defaults for the model type (peft: "
                     "TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING); prompt and prefix tuning (no projection) "
                     "with peft's task type CAUSAL_LM (SmolLM2) or FEATURE_EXTRACTION (MiniLM). The target names "
                     "LoRA, IA3 and prompt tuning; prefix tuning is listed as well.",
            "notes": []}


# -- speed --------------------------------------------------------------------------------------------------------
def _traced(name: str, fn: Any) -> Any:
    calls = [0]

    def call() -> None:
        fn()
        calls[0] += 1
        say(f"speed: {name} step {calls[0]} done")
    return call


def _step_times(targets: str, r: int, batch: int, seq: int, rounds: int) -> dict[str, float]:
    tok = variants.tokenizer_of_smollm2()
    task = variants.train_task(tok, seq)
    data = variants.batches(task, batch, 4)
    ours = variants.load_base({})
    variants.add_torchslim_lora(ours, targets, r, 2 * r)
    theirs, _ = variants.add_peft_lora(variants.load_base({}), targets, r, 2 * r)
    fns = {"torchslim": _traced(f"torchslim {targets}", variants.make_step(ours, task, data)),
           "peft": _traced(f"peft {targets}", variants.make_step(theirs, task, data))}
    return interleaved(fns, rounds=rounds)


def _memory(base: dict[str, Any], targets: str, repeats: int) -> dict[str, dict[str, Any]]:
    """Peak memory of each variant: ``repeats`` fresh subprocesses each, alternating torchslim and peft, median;
    with glibc's default allocator and again with a fixed 1 MiB mmap threshold (suffix ``-mmap``)."""
    kinds = (("torchslim", "torchslim-lora"), ("peft", "peft-lora"))
    runs: dict[str, list[dict[str, Any]]] = {}
    for suffix, env in (("", {}), ("-mmap", MMAP_1MIB)):
        for i in range(repeats):
            for k, m in kinds:
                runs.setdefault(k + suffix, []).append(run_worker(
                    {**base, "label": f"memory {k}{suffix} {targets} ({i + 1}/{repeats})", "method": m,
                     "loop": "manual", "env": env}))
    out = {k: {**rs[0], "peak MB": statistics.median(r["peak MB"] for r in rs),
               "range": f"{min(r['peak MB'] for r in rs):,.0f}-{max(r['peak MB'] for r in rs):,.0f}"}
           for k, rs in runs.items()}
    out["trainer"] = run_worker({**base, "label": f"memory finetune_ {targets}", "method": "torchslim-lora",
                                 "loop": "trainer"})
    return out


def part_speed(threads: int, rounds: int, batch: int = 4, seq: int = 256, r: int = 8,
               repeats: int = 3) -> dict[str, Any]:
    rows = []
    for targets, label in (("qv", "q_proj, v_proj"), ("all", "all 7 block linear layers")):
        med = _step_times(targets, r, batch, seq, rounds)
        base = {"targets": targets, "r": r, "alpha": 2 * r, "steps": 3, "batch": batch, "seq": seq, "lr": 1e-4,
                "threads": threads}
        mem = _memory(base, targets, repeats)
        rows.append({"name": f"LoRA r={r} on {label}", "trainable": mem["torchslim"]["trainable"],
                     "torchslim s/step": med["torchslim"], "peft s/step": med["peft"],
                     "time ratio": f"{med['torchslim'] / med['peft']:.3f}x",
                     "torchslim peak MB": mem["torchslim"]["peak MB"], "peft peak MB": mem["peft"]["peak MB"],
                     "memory ratio": f"{mem['torchslim']['peak MB'] / mem['peft']['peak MB']:.3f}x",
                     "torchslim peak MB, 1 MiB mmap": mem["torchslim-mmap"]["peak MB"],
                     "peft peak MB, 1 MiB mmap": mem["peft-mmap"]["peak MB"],
                     "memory ratio, 1 MiB mmap":
                         f"{mem['torchslim-mmap']['peak MB'] / mem['peft-mmap']['peak MB']:.3f}x",
                     "finetune_ peak MB": mem["trainer"]["peak MB"],
                     "note": f"peft counts {mem['peft']['trainable']:,} trainable; peak runs: torchslim "
                             f"{mem['torchslim']['range']}, peft {mem['peft']['range']} MB (1 MiB mmap: "
                             f"{mem['torchslim-mmap']['range']}, {mem['peft-mmap']['range']} MB)"})
    return {"columns": ["trainable", "torchslim s/step", "peft s/step", "time ratio", "torchslim peak MB",
                        "peft peak MB", "memory ratio", "torchslim peak MB, 1 MiB mmap", "peft peak MB, 1 MiB mmap",
                        "memory ratio, 1 MiB mmap", "finetune_ peak MB"], "rows": rows,
            "intro": f"SmolLM2-135M fp32, LoRA r={r} alpha {2 * r}, batch {batch} x {seq} tokens of the calibration "
                     "text, AdamW over the trainable parameters. Step = zero_grad + forward + the task's loss + "
                     "backward + optimizer step, the same hand-written code for both libraries; s/step: median of "
                     f"{rounds} interleaved rounds (one step of each per round, after one warm-up step each), both "
                     f"models in one process. Peak MB: 3 steps in a fresh subprocess, median of {repeats} such runs "
                     "per variant (torchslim and peft alternating; their ranges in the notes), with glibc's default "
                     "allocator and again with MALLOC_MMAP_THRESHOLD_=1048576 (see the qlora part); finetune_ peak "
                     "MB: "
                     "torchslim's own Trainer (finetune_ with LoraConfig, 3 steps) for the same adapter. Ratios are "
                     "torchslim / peft (<= 1.000x: torchslim no worse).",
            "notes": [f"torch threads per process: {threads}."]}


# -- qlora --------------------------------------------------------------------------------------------------------
def int4_artifact() -> Path:
    """SmolLM2 with the int4 base's layers, saved once as a torchslim artifact (what a QLoRA user loads)."""
    import torchslim

    folder = work_dir() / "int4-rtn-g128"
    if not (folder / "manifest.json").is_file():
        say(f"qlora: quantizing SmolLM2 to int4 (RTN, g128) into {folder}")
        model = variants.load_base({})
        variants.quantize_int4(model)
        shutil.rmtree(folder, ignore_errors=True)
        torchslim.save(model, folder, source={"kind": "zoo", "name": "smollm2-135m"})
    return folder


def part_qlora(threads: int, steps: int = 2, batch: int = 4, seq: int = 256, repeats: int = 3) -> dict[str, Any]:
    base = {"method": "torchslim-lora", "targets": "all", "r": 16, "alpha": 32, "loop": "trainer", "steps": steps,
            "batch": batch, "seq": seq, "lr": 5e-4, "threads": threads}
    int4 = int4_artifact()
    cases = [("LoRA, fp32 base", {}), ("LoRA, fp32 base, gradient checkpointing", {"gc": True}),
             ("QLoRA, int4 base, gradient checkpointing", {"artifact": str(int4), "gc": True}),
             ("QLoRA, int4 base, no checkpointing", {"artifact": str(int4)})]
    runs = {name: [run_worker({**base, **extra, "label": f"{name} ({i + 1}/{repeats})"}) for i in range(repeats)]
            for name, extra in cases}
    res = {name: {**rs[0], "peak MB": statistics.median(r["peak MB"] for r in rs),
                  "s/step": statistics.median(r["s/step"] for r in rs),
                  "range": f"{min(r['peak MB'] for r in rs):,.0f}-{max(r['peak MB'] for r in rs):,.0f}"}
           for name, rs in runs.items()}
    trim = {name: run_worker({**base, **extra, "label": f"{name}, 1 MiB mmap threshold", "env": MMAP_1MIB})
            for name, extra in cases}
    ref, ref_t = res["LoRA, fp32 base"]["peak MB"], trim["LoRA, fp32 base"]["peak MB"]
    rows = [{"name": name, "peak MB": r["peak MB"], "runs": r["range"], "vs LoRA fp32": f"{r['peak MB'] / ref:.3f}x",
             "peak MB, 1 MiB mmap": trim[name]["peak MB"], "vs LoRA fp32, 1 MiB mmap":
             f"{trim[name]['peak MB'] / ref_t:.3f}x", "load peak MB": r["load peak MB"], "s/step": r["s/step"],
             "trainable": r["trainable"]} for name, r in res.items()]
    return {"columns": ["peak MB", "runs", "vs LoRA fp32", "peak MB, 1 MiB mmap", "vs LoRA fp32, 1 MiB mmap",
                        "load peak MB", "s/step", "trainable"], "rows": rows,
            "intro": f"SmolLM2-135M, LoRA r=16 alpha 32 on every block linear layer (the int4-qlora recipe's "
                     f"adapter), torchslim's Trainer (finetune_), AdamW, batch {batch} x {seq} tokens, {steps} "
                     "steps, each row in a fresh subprocess. int4 base: asymmetric int4 in groups of 128 by round "
                     "to nearest, the head int8 per channel (the int4-qlora recipe's layers and formats; its GPTQ "
                     "only chooses other values on the same grid, so the memory is the same), saved once as a "
                     "torchslim artifact that each QLoRA subprocess loads, as a user would; the fp32 base is the "
                     f"zoo's cached folder. 'peak MB': the median of {repeats} runs ('runs': their range) with glibc's "
                     "default allocator, whose mmap threshold rises as "
                     "large blocks are freed, so later ones of that size stay in its heap after they are freed and "
                     "count as resident; 'peak MB, 1 MiB mmap': the same run again in a fresh process with "
                     "MALLOC_MMAP_THRESHOLD_=1048576 (blocks of 1 MiB or more are returned to the OS when freed), "
                     "closer to the memory the tensors alive at once need. 'load peak MB': the loader's own "
                     "high-water mark (torchslim.load builds the model's float skeleton before it reads the packed "
                     "tensors).",
            "notes": [f"s/step: the Trainer's wall time over its {steps} steps, the first included (median of the "
                      "default-allocator runs), on a shared CPU: for speed see the speed part.",
                      f"torch threads per process: {threads}."]}


# -- interop ------------------------------------------------------------------------------------------------------
def _out(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Logits (MiniLM: last hidden state) of the text positions (peft's prompt tuning returns its virtual ones too)."""
    with torch.no_grad():
        o = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    t = getattr(o, "logits", None)
    t = t if t is not None else o.last_hidden_state
    return t[:, t.shape[1] - ids.shape[1]:]


def _shake(params: list[torch.nn.Parameter], seed: int) -> None:
    """Move every adapter tensor (LoRA's B off zero, IA3's vectors off one), so the adapter changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def part_interop() -> dict[str, Any]:
    import peft

    from torchslim.peft import branches, from_peft, to_peft

    rows = []
    ids = torch.randint(5, 1000, (2, 48), generator=torch.Generator().manual_seed(0))
    for model_name, (build, task_type) in _models().items():
        bare = _out(build().eval(), ids)
        for label, ours_cfg, peft_cfg in _cases(model_name, task_type):
            method = label.split(",")[0].split(" r=")[0]
            with tempfile.TemporaryDirectory() as d:
                ours = build().eval()
                torch.manual_seed(0)
                ours_cfg.add_branches(ours)
                _shake([p for _, b in branches(ours) for p in b.parameters()], 1)
                want = _out(ours, ids)
                to_peft(ours, Path(d) / "ts")
                got = _out(peft.PeftModel.from_pretrained(build().eval(), Path(d) / "ts").eval(), ids)
                rows.append({"name": f"{model_name}: torchslim {method} -> peft",
                             "max abs diff": (got - want).abs().max().item(),
                             "adapter effect": (want - bare).abs().max().item(),
                             "note": "to_peft, then peft.PeftModel.from_pretrained on a fresh base"})
                torch.manual_seed(0)
                pm = peft.get_peft_model(build().eval(), peft_cfg)
                _shake([p for p in pm.parameters() if p.requires_grad], 2)
                pm.eval()
                want = _out(pm, ids)
                pm.save_pretrained(Path(d) / "hf")
                mine = build().eval()
                from_peft(mine, Path(d) / "hf")
                rows.append({"name": f"{model_name}: peft {method} -> torchslim",
                             "max abs diff": (_out(mine, ids) - want).abs().max().item(),
                             "adapter effect": (want - bare).abs().max().item(),
                             "note": "peft save_pretrained, then torchslim.peft.from_peft on a fresh base"})
            say(f"interop: {rows[-2]['name']} {rows[-2]['max abs diff']:.2e}, {rows[-1]['name']} "
                f"{rows[-1]['max abs diff']:.2e}")
    return {"columns": ["max abs diff", "adapter effect"], "rows": rows,
            "intro": "Each method's adapter (the params part's settings) with every tensor moved by N(0, 0.05) noise "
                     "(LoRA's B off zero, IA3's vectors off one, the virtual tokens), so the adapter changes the "
                     "outputs ('adapter effect': max |output with the adapter - output of the bare base|); 'max abs "
                     "diff': the same adapter's outputs in the other library (logits; MiniLM: last hidden state; "
                     "text positions only), 2 x 48 random tokens, no padding.",
            "notes": []}

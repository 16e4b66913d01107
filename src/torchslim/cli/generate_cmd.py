"""``torchslim generate``: greedy text from a causal LM (artifact, HF folder or zoo name) on the fast path."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from torchslim.runtime.decode import DecodeTiming

# a span shorter than this is one call's overhead and clock noise, not a rate: it is shown in ms, never as tok/s
MIN_TIMED_S = 1e-3


def rate(tokens: int, seconds: float) -> float | None:
    """Tokens per second, or None where ``seconds`` is too short to time (or no token was timed)."""
    return tokens / seconds if tokens > 0 and seconds >= MIN_TIMED_S else None


def rate_text(tokens_per_s: float | None) -> str:
    """``8.3 tok/s``, ``0.25 tok/s``, ``1329 tok/s``: a slow rate keeps its digits (never rounded to 0)."""
    if tokens_per_s is None:
        return "too short to time"
    return f"{tokens_per_s:.0f} tok/s" if tokens_per_s >= 100 else f"{tokens_per_s:.2g} tok/s" if tokens_per_s < 1 \
        else f"{tokens_per_s:.1f} tok/s"


def ms_text(seconds: float) -> str:
    return f"{1e3 * seconds:.0f} ms" if seconds >= 0.01 else f"{1e3 * seconds:.2g} ms"


def timing_line(timing: DecodeTiming, load_s: float, compile_s: float | None, dtype: str) -> str:
    """One line: load, compile, first token (prompt rate only where it could be timed), decode rate."""
    decode = rate(timing.new_tokens - 1, timing.decode_s)       # the first new token comes from the prefill
    decode_text = "decode: no step after the first token" if timing.new_tokens < 2 else f"decode {rate_text(decode)}"
    # the dtype is the activations': an int4 artifact runs its packed weights on bf16 activations, and said "bf16"
    return (f"{timing.new_tokens} new tokens, {dtype} activations{', compiled' if compile_s is not None else ''}: "
            f"load {load_s:.1f} s" + (f", compile {compile_s:.1f} s" if compile_s is not None else "") +
            f", first token {ms_text(timing.prefill_s)} ({timing.prompt_tokens}-token prompt, "
            f"{rate_text(rate(timing.prompt_tokens, timing.prefill_s))}), {decode_text}")


def generate_cmd(
    model: str = typer.Argument(..., help="Artifact folder, Hugging Face folder or zoo name of a causal LM."),
    prompt: str = typer.Option(..., "--prompt", "-p", help="Text to continue."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", min=1, max=1 << 16),
    dtype: str = typer.Option("auto", help="Activations: bf16, fp32, or auto (bf16 where the CPU has bf16 "
                                           "instructions, else fp32)."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the decode step (static cache; slow "
                                                          "to start: compile time is reported on its own)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the text and the timings as JSON."),
) -> None:
    """Generate greedily; print the text, then load, compile, time to first token and decode tokens/s apart."""
    import json
    import time

    import torch
    from rich.console import Console
    from rich.markup import escape

    from torchslim.cli.status import status
    from torchslim.core.bounds import check_new_tokens, check_text
    from torchslim.core.errors import ConfigError, TorchSlimError
    from torchslim.models import load_model
    from torchslim.runtime import FastDecoder, prepare_fast
    from torchslim.runtime.machine import cpu_features

    check_text(prompt, "--prompt")
    if dtype not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"--dtype must be bf16, fp32 or auto, got {dtype!r}")
    console = Console()
    t0 = time.perf_counter()
    with status(f"loading {model}"):
        loaded = load_model(model)
    if loaded.tokenizer is None:
        raise TorchSlimError(f"{model}: no tokenizer is known for this model")
    use_bf16 = dtype == "bf16" or (dtype == "auto" and bool({"avx512_bf16", "amx_bf16"} & set(cpu_features())))
    if use_bf16:
        prepare_fast(loaded.model, torch.bfloat16)
    ids = loaded.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if ids.shape[1] == 0:
        raise ConfigError("--prompt is empty after tokenization")
    check_new_tokens(ids.shape[1], max_new_tokens, loaded.model)
    load_s = time.perf_counter() - t0
    decoder = FastDecoder(loaded.model, max_len=ids.shape[1] + max_new_tokens, compile=compile)
    compile_s = 0.0
    if compile:
        with status("compiling the decode step (once per process)"):
            compile_s = decoder.warm_up()
    out, timing = decoder.generate(ids, max_new_tokens, eos_token_id=loaded.tokenizer.eos_token_id)
    text = loaded.tokenizer.decode(out[0], skip_special_tokens=True)
    console.print(text, markup=False, highlight=False)
    times = {"load_s": load_s, "compile_s": compile_s, "first_token_s": timing.prefill_s, "decode_s": timing.decode_s}
    summary = {"text": text, "prompt_tokens": timing.prompt_tokens, "new_tokens": timing.new_tokens,
               "dtype": "bf16" if use_bf16 else "fp32", "compiled": compile, **times,
               "total_s": sum(times.values()),              # a rate too short to time is null, never 0
               "decode_tokens_per_s": rate(timing.new_tokens - 1, timing.decode_s),
               "prefill_tokens_per_s": rate(timing.prompt_tokens, timing.prefill_s)}
    line = timing_line(timing, load_s, compile_s if compile else None, summary["dtype"])
    console.print(f"[dim]{escape(line)}[/dim]", soft_wrap=True)   # one line in a log, never cut
    if json_out is not None:
        from torchslim.core.io import atomic_file

        with atomic_file(json_out) as f:
            f.write(json.dumps(summary, indent=2))


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_cmd)

"""``torchslim export``: an artifact in another ecosystem's format."""
from __future__ import annotations

from pathlib import Path

import typer

FORCE_HELP = "Replace an existing output (another artifact, a non-empty folder, a file); never the source."
EVAL_HELP = ("Evaluate the model and the written file on the model's task and print both (--no-eval skips the two "
             "evaluations).")


def print_quality(console, quality: dict | None) -> None:
    """``quality: perplexity (lower is better) model 27.2, exported file 27.3 (+0.4%; read by ONNX Runtime)``."""
    from rich.markup import escape

    if not quality:
        return
    if "skipped" in quality:
        console.print(escape(f"quality of the exported file: not measured ({quality['skipped']})"))
        return
    a, e = quality["artifact"], quality["exported"]
    change = f"{100 * (e - a) / abs(a):+.2f}%; " if a else ""
    better = "higher" if quality["higher_is_better"] else "lower"
    console.print(escape(f"quality: {quality['metric']} ({better} is better) model {a:.4g}, exported file {e:.4g} "
                         f"({change}read by {quality['reader']})"), soft_wrap=True)
def gguf_layer_summary(done: dict) -> str:
    """``180 calibrated by GPTQ on their grid, 31 rounded to their grid (round-to-nearest), 0 float, 180 in
    llama.cpp's fallback type``: what happened to each weight layer, in the words of what was done to it."""
    calibrated = done["calibrated_layers"]
    kept = done["exact_layers"] - calibrated                # packed layers whose codes were already on the grid
    parts = [f"{calibrated} calibrated by GPTQ on their grid"] if calibrated else []
    if kept or not calibrated:
        parts.append(f"{kept} packed layers kept their codes")
    parts.append(f"{done['rounded_layers']} rounded to their grid (round-to-nearest)")
    parts.append(f"{done['float_layers']} float")
    if done["fallback_layers"]:
        parts.append(f"{done['fallback_layers']} in llama.cpp's fallback type")
    return ", ".join(parts)


export_app = typer.Typer(help="Export an artifact to another format.", no_args_is_help=True)


@export_app.command("hf")
def export_hf_cmd(
    artifact: Path = typer.Argument(..., help="torchslim artifact folder."),
    out: Path = typer.Option(..., "--out", "-o", help="Hugging Face folder to write (save_pretrained layout)."),
    dense: bool = typer.Option(False, "--dense", help="Write packed, sparse and scaled layers back in float."),
    fmt: str = typer.Option("hf", "--format", help="hf (save_pretrained layout) or compressed-tensors (packed int "
                                                   "layers that transformers and vLLM load without torchslim)."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help=EVAL_HELP),
) -> None:
    """Write an artifact as an ordinary Hugging Face folder (from_pretrained loads it)."""
    from rich.console import Console
    from rich.markup import escape

    from torchslim.core.errors import ConfigError
    from torchslim.core.targets import folder_export
    from torchslim.exports import export_hf_folder

    if fmt not in ("hf", "compressed-tensors"):
        raise ConfigError(f"--format {fmt!r}: expected hf or compressed-tensors")
    if fmt == "compressed-tensors" and dense:
        raise ConfigError("--dense writes float layers, --format compressed-tensors packed ones: give one of them")
    with folder_export(out, artifact, force) as tmp:     # never a half-written folder, never the source
        done = export_hf_folder(artifact, tmp, dense=dense, fmt=fmt, evaluate=evaluate)
    console = Console()
    if fmt == "compressed-tensors":
        kept = ", ".join(done["dense_layers"]) or "none"
        console.print(escape(f"wrote {out}") + f" ({done['bytes'] / 2**20:.2f} MiB, compressed-tensors "
                      f"{done['format']}): {done['packed_layers']} packed layers; left in float: " + escape(kept))
    else:
        console.print(escape(f"wrote {out}") + (f" ({done['densified_layers']} layers dequantized to float)"
                                                 if dense else ""))
    print_quality(console, done.get("quality"))


@export_app.command("gguf")
def export_gguf_cmd(
    artifact: str = typer.Argument(..., help="Artifact folder, Hugging Face folder or zoo name (a decoder LM)."),
    out: Path = typer.Option(..., "--out", "-o", help="GGUF file to write."),
    qtype: str = typer.Option("Q4_0", "--type", "-t", help="Q4_K_M (llama.cpp's per-tensor mix), Q4_K, Q6_K, Q4_0, Q4_1, Q5_0, Q8_0, F16, BF16 or F32."),
    embed_type: str = typer.Option("Q8_0", "--embed-type", help="Type of the token embedding (and untied head)."),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate", help="GPTQ float layers on their GGUF grid with the model's calibration data (--no-calibrate: round to nearest, as llama-quantize)."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help=EVAL_HELP),
) -> None:
    """Write a decoder model as one GGUF file for llama.cpp (calibrated codes kept where on the grid)."""
    from rich.console import Console
    from rich.markup import escape

    from torchslim.core.targets import check_export
    from torchslim.exports import export_gguf

    check_export(out, artifact, force, folder=False)        # the writer renames a complete temporary file
    done = export_gguf(artifact, out, qtype=qtype.upper(), embed_type=embed_type.upper(), calibrate=calibrate,
                       evaluate=evaluate)
    console = Console()
    console.print(escape(f"wrote {out}") + f" ({done['bytes'] / 2**20:.1f} MiB, {done['type']}): "
                  + gguf_layer_summary(done) + "; " + escape(f"tokenizer {done['tokenizer']}"), soft_wrap=True)
    print_quality(console, done.get("quality"))


@export_app.command("onnx")
def export_onnx_cmd(
    model: str = typer.Argument(..., help="Artifact folder, Hugging Face folder or zoo name."),
    out: Path = typer.Option(..., "--out", "-o", help="ONNX file to write (NAME.onnx); a folder for causal LMs and "
                                                      "encoder-decoders (optimum's ORTModelFor* layout)."),
    shape: list[str] = typer.Option(None, "--shape", help="Example input shape such as 1x3x32x32, one per positional "
                                                          "input (float); for models without a task."),
    inputs: list[str] = typer.Option(None, "--input", help="Named example input NAME=SHAPE[:DTYPE], such as "
                                                           "input_ids=1x16:int64; repeatable."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help=EVAL_HELP),
) -> None:
    """Write a model for ONNX Runtime, its packed layers as MatMulNBits / int8 QDQ / dynamic int8."""
    from rich.console import Console
    from rich.markup import escape

    from torchslim.core.targets import check_export, folder_export
    from torchslim.exports import example_inputs_from, export_onnx

    example = example_inputs_from(shape, inputs)             # bad shapes fail before the model loads
    if out.suffix.lower() == ".onnx":
        check_export(out, model, force, folder=False)        # the writer renames a complete temporary file
        done = export_onnx(model, out, example_inputs=example, evaluate=evaluate)
    else:
        with folder_export(out, model, force) as tmp:        # never a half-written folder, never the source
            done = export_onnx(model, tmp, example_inputs=example, evaluate=evaluate)
    kinds = ", ".join(f"{v} {k}" for k, v in done["rewritten"].items()) or "none"
    names = done["inputs"] if isinstance(done["inputs"], list) else done["inputs"][done["files"][0]]
    console = Console()
    console.print(escape(f"wrote {out}") + f" ({done['bytes'] / 2**20:.1f} MiB; {', '.join(done['files'])}; inputs "
                  f"{', '.join(names[:4])}{', ...' if len(names) > 4 else ''}); packed layers kept: {kinds}; "
                  f"left in float: {done['float_layers']}")
    print_quality(console, done.get("quality"))


@export_app.command("peft")
def export_peft_cmd(
    artifact: Path = typer.Argument(..., help="torchslim artifact folder holding an adapter (LoRA/DoRA, IA3, "
                                                 "prompt or prefix tuning)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (adapter_config.json + "
                                                      "adapter_model.safetensors, as Hugging Face peft saves them)."),
    adapter: str = typer.Option(None, "--adapter", help="Which adapter to write (default: the artifact's only one)."),
    base: str = typer.Option(None, "--base", help="base_model_name_or_path to record (default: the artifact's source "
                                                  "folder, if it came from one)."),
    force: bool = typer.Option(False, "--force", help=FORCE_HELP),
) -> None:
    """Write an artifact's adapter in Hugging Face peft's format (peft.PeftModel.from_pretrained loads it)."""
    from rich.console import Console
    from rich.markup import escape

    from torchslim.artifact import load
    from torchslim.core.errors import ConfigError
    from torchslim.core.state import state_of
    from torchslim.core.targets import folder_export
    from torchslim.peft import adapters, to_peft

    with folder_export(out, artifact, force) as tmp:     # never a half-written folder, never the source
        model = load(artifact)
        have = adapters(model)
        if adapter is None and len(have) != 1:
            raise ConfigError(f"{artifact} has no adapter to export" if not have else
                              f"{artifact} has adapters {', '.join(have)}: choose one with --adapter")
        source = state_of(model).source or {}
        if base is None and source.get("kind") == "hf" and isinstance(source.get("path"), str):
            base = source["path"]
        done = to_peft(model, tmp, adapter or have[0], base_model_name_or_path=base)
    compressed = len(state_of(model).manifest.get("layers") or {})
    console = Console()
    console.print(escape(f"wrote {out}") + f" (peft {done['peft_type']} adapter " + escape(repr(done["adapter"]))
                  + f": {str(done['layers']) + ' layers' if done['layers'] else 'virtual tokens'}, "
                  + f"{done['bytes'] / 2**20:.2f} MiB); load it with "
                  + escape(f"peft.PeftModel.from_pretrained on the base model and '{out}'"))
    if compressed:
        console.print(f"note: this artifact's base has {compressed} compressed layers; peft applies the adapter to "
                      "the base you load it on (the float model it was compressed from, or `torchslim export hf "
                      "--dense`), whose outputs differ from the compressed base's by the compression error")


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")

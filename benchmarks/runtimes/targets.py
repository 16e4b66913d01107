"""Issue 25 (several runtimes, one harness): did each table get produced, with every runtime, and what it says.
Reads docs/results/runtimes_minilm.json and runtimes_smollm2.json; writes docs/results/runtimes_targets.md."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROOT, write_checks  # noqa: E402

RESULTS = ROOT / "docs/results"


def _rows(name: str) -> dict[str, dict]:
    path = RESULTS / f"runtimes_{name}.json"
    if not path.is_file():
        return {}
    return {r["name"]: r for r in json.loads(path.read_text())["rows"]}


def _lock(name: str) -> tuple[str, str, bool | None, str]:
    path = RESULTS / f"runtimes_{name}.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    note = next((n for n in data.get("notes", []) if n.startswith("timed ")), "no table")
    load = (data.get("machine") or {}).get("load_end")
    got = note.split(":")[0] + (f"; load average {load[0]:.1f} at the end" if load else "")
    return (f"{name}: timed loops hold the shared benchmark lock", got, note.startswith("timed holding"),
            "waited 10-20 min while other benchmarks held it, then timed without it (interleaved, so ratios "
            "hold better than absolute figures); rerun `make bench-runtimes` on a quiet machine")


def _has(rows: dict[str, dict], prefix: str, cols: list[str]) -> list[str]:
    return [n for n, r in rows.items() if n.startswith(prefix) and all(r.get(c) is not None for c in cols)]


def minilm_checks() -> list[tuple[str, str, bool | None, str]]:
    rows = _rows("minilm")
    cols = ["cosine GPL-3", "cosine pydoc", "1x128 ms", "32x128 ms"]
    found = {rt: _has(rows, rt, cols) for rt in ("torch", "ONNX Runtime", "OpenVINO")}
    got = "; ".join(f"{rt}: {len(v)} rows" for rt, v in found.items())
    out = [("MiniLM int8: one table of torch, ONNX Runtime and OpenVINO at 1x128 and 32x128 with fidelity on two "
            "domains", got or "no table", bool(rows) and all(found.values()),
            "OpenVINO rows need `pip install openvino`")]
    parity = {n: rows[n]["cosine GPL-3"] for n in ("ONNX Runtime fp32", "OpenVINO fp32") if n in rows}
    out.append(("the harness measures every runtime alike: fp32 files in ONNX Runtime and OpenVINO at cosine >= "
                "0.9999 to torch fp32", ", ".join(f"{k} {v:.6f}" for k, v in parity.items()) or "missing",
                bool(parity) and min(parity.values()) >= 0.9999, ""))
    int8 = {n: r for n, r in rows.items() if "W8A8" in n or "int8" in n}
    desc = "; ".join(f"{n}: cosine {r['cosine GPL-3']:.4f}/{r['cosine pydoc']:.4f}, {r['1x128 ms']:.2f} ms @1x128, "
                     f"{r['32x128 ms']:.0f} ms @32x128" for n, r in int8.items())
    out.append(("int8 rows (figures; no target value set by the issue)", desc or "missing", bool(int8) or None, ""))
    return out


def smollm2_checks() -> list[tuple[str, str, bool | None, str]]:
    rows = _rows("smollm2")
    cols = ["ppl GPL-3", "ppl pydoc", "decode tok/s", "prefill 128 tok/s"]
    found = {rt: _has(rows, rt, cols) for rt in ("torch", "llama.cpp")}
    got = "; ".join(f"{rt}: {len(v)} rows" for rt, v in found.items())
    out = [("SmolLM2 int4: one table of torch and llama.cpp (bindings) with decode, prefill and perplexity on two "
            "domains", got or "no table", bool(rows) and all(found.values()),
            "llama.cpp rows need `pip install llama-cpp-python` (compiles llama.cpp, 5-15 min)")]
    ref, f32 = rows.get("torch fp32 (reference)"), rows.get("llama.cpp F32 (bindings)")
    if ref and f32:
        rel = max(abs(f32[k] / ref[k] - 1) for k in ("ppl GPL-3", "ppl pydoc"))
        out.append(("the harness measures both runtimes alike: llama.cpp F32 perplexity within 1% of torch fp32 "
                    "on both texts", f"{100 * rel:.2f}% apart", rel <= 0.01, ""))
    int4 = {n: r for n, r in rows.items() if "int4" in n or "Q4_0" in n}
    desc = "; ".join(f"{n}: ppl {r['ppl GPL-3']:.2f}/{r['ppl pydoc']:.2f}, decode {r['decode tok/s']:.0f} tok/s, "
                     f"prefill {r['prefill 128 tok/s']:.0f} tok/s @128" for n, r in int4.items())
    out.append(("int4 rows (figures; no target value set by the issue)", desc or "missing", bool(int4) or None, ""))
    return out


def main() -> None:
    write_checks(RESULTS / "runtimes_targets.md", "Targets: several runtimes, one harness (issue 25)",
                 minilm_checks() + smollm2_checks() + [_lock("minilm"), _lock("smollm2")])


if __name__ == "__main__":
    main()

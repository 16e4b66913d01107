"""Layer-wise onloading: compress a model larger than memory, one transformer block at a time.

The skeleton's parameters are on the meta device and only what lies outside the blocks (embeddings, final
norm, head) is in memory. The calibrated methods' own handlers run unchanged through the registry: the block
runners (:mod:`torchslim.calibration.pipeline`) ask the :class:`BlockStreamer` attached to the model for each
block's weights when they reach it (read from the source safetensors files), and hand the block back when they
are done with it; the streamer writes the block, compressed, to a file under ``<out>/.torchslim-onload`` and
puts its parameters back on the meta device. A second stage reads the first stage's block files. At the end the
block files and the resident tensors are merged into the artifact's one ``model.safetensors``: the very bytes an
in-memory run saves (same calibration order, same dtypes).
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.artifact.format import dedup_tensors, save
from torchslim.calibration.onload import HiddenStore, attach_onloader
from torchslim.core.config import BaseConfig
from torchslim.core.context import ApplyContext
from torchslim.core.errors import ConfigError, TorchSlimError
from torchslim.core.io import ONLOAD_DIR
from torchslim.core.registry import apply_, get_entry
from torchslim.core.state import state_of
from torchslim.runtime.allocator import bounded_heap, release_freed_memory
from torchslim.scale.files import TensorFiles, human, merge, parse_bytes
from torchslim.scale.source import block_prefixes, in_block, load_tensors, open_source

log = logging.getLogger("torchslim.scale")


@dataclass
class OnloadStats:
    blocks: int = 0
    stages: int = 0
    read_bytes: int = 0
    read_seconds: float = 0.0
    write_seconds: float = 0.0
    spilled_bytes: int = 0
    largest_block: int = 0
    resident_bytes: int = 0
    cache_budget: int | None = None
    seconds: float = 0.0
    bounded_heap: bool = False       # large freed blocks went back to the system at once (glibc)

    def line(self) -> str:
        spill = f", {human(self.spilled_bytes)} of block inputs spilled to disk" if self.spilled_bytes else ""
        return (f"onloaded {self.blocks} blocks x {self.stages} stage(s): {human(self.read_bytes)} read in "
                f"{self.read_seconds:.1f} s, block files written in {self.write_seconds:.1f} s{spill}; "
                f"largest block {human(self.largest_block)}, resident {human(self.resident_bytes)}"
                + ("; freed activations returned to the system at once" if self.bounded_heap else ""))


def release(modules: list[nn.Module]) -> None:
    """Put every parameter and persistent buffer of ``modules`` back on the meta device (non-persistent buffers, which
    the model computes rather than stores, stay, except in compressed-format modules, whose loading rebuilds them: a
    sparse layer's mask), then hand the freed memory back to the system."""
    for m in modules:
        rebuilt = callable(getattr(m, "torchslim_layer_info", None))     # a format module rebuilds all on load
        for attr, t in list(m._parameters.items()):
            if t is not None and not t.is_meta:
                m._parameters[attr] = nn.Parameter(torch.empty_like(t, device="meta"), t.requires_grad)
        for attr, t in list(m._buffers.items()):
            if t is not None and not t.is_meta and (rebuilt or attr not in m._non_persistent_buffers_set):
                m._buffers[attr] = torch.empty_like(t, device="meta")
    release_freed_memory()


@dataclass
class BlockStreamer:
    """The onloader of one run: block weights in from the current stage's files, compressed blocks out."""

    model: nn.Module
    files: TensorFiles
    work: Path
    cache_budget: int | None = None
    stats: OnloadStats = field(default_factory=OnloadStats)

    def __post_init__(self) -> None:
        self.prefixes = block_prefixes(self.model)
        self.written: dict[str, Path] = {}
        self.previous: list[Path] = []
        self.aliases: dict[str, str] = {}
        self.infos: dict[str, dict[str, Any]] = {}
        self.stores: list[HiddenStore] = []
        self.work.mkdir(parents=True, exist_ok=True)

    # -- Onloader --------------------------------------------------------------------
    def enter(self, name: str, block: nn.Module) -> None:
        if name in self.written:
            raise TorchSlimError(f"onloading: block {name} was reached twice in one stage")
        t0 = time.perf_counter()
        self.entered = list(block.modules())      # a module the handler replaces keeps its weights until released
        n = load_tensors(block, self.files, prefix=name + ".", from_source=not self.previous)
        self.stats.read_bytes += n
        self.stats.largest_block = max(self.stats.largest_block, n)
        self.stats.read_seconds += time.perf_counter() - t0

    def leave(self, name: str, block: nn.Module) -> None:
        from safetensors.torch import save_file

        t0 = time.perf_counter()
        state = {f"{name}.{k}": v for k, v in block.state_dict().items()}
        meta = [n for n, t in state.items() if t.is_meta]
        if meta:
            raise TorchSlimError(f"onloading: '{meta[0]}' has no weights after its block was processed")
        tensors, aliases = dedup_tensors(state)
        path = self.work / f"stage{self.stats.stages}-block{self.prefixes.index(name):05d}.safetensors"
        save_file(tensors, str(path))
        self.written[name] = path
        self.aliases = {a: c for a, c in self.aliases.items() if not a.startswith(name + ".")} | aliases
        self.infos = {n: i for n, i in self.infos.items() if not (n == name or n.startswith(name + "."))}
        for sub, m in block.named_modules():
            info = getattr(m, "torchslim_layer_info", None)
            if callable(info):
                self.infos[f"{name}.{sub}" if sub else name] = {"module": type(m).__name__, **info()}
        release([*self.entered, *block.modules()])
        self.entered = []
        self.stats.write_seconds += time.perf_counter() - t0

    def new_store(self) -> HiddenStore:
        store = HiddenStore(self.cache_budget, self.work / "inputs")
        self.stores.append(store)
        return store

    # -- stages ----------------------------------------------------------------------
    def end_stage(self, label: str) -> None:
        """After a stage: every block must have been reached (its files are the next stage's source)."""
        missing = [p for p in self.prefixes if p not in self.written]
        if missing:
            raise ConfigError(f"{label} does not calibrate block by block ({len(missing)} of {len(self.prefixes)} "
                              f"blocks never reached, e.g. {missing[0]}): it cannot run with layer-wise onloading")
        self.stats.spilled_bytes += sum(s.spilled for s in self.stores)
        self.stores.clear()
        self.files = TensorFiles([self.written[p] for p in self.prefixes])
        for old in self.previous:
            old.unlink(missing_ok=True)
        self.previous = [self.written[p] for p in self.prefixes]
        self.written = {}
        self.stats.stages += 1
        self.stats.blocks = len(self.prefixes)

    # -- StreamedWeights (artifact.format.save) ----------------------------------------
    def write(self, file: Path, metadata: dict[str, str]) -> dict[str, str]:
        from safetensors.torch import save_file

        resident: dict[str, torch.Tensor] = {}
        for name, m in self.model.named_modules():       # each module's own tensors: blocks (on meta) never asked
            if not in_block(name + ".", self.prefixes):
                m._save_to_state_dict(resident, f"{name}." if name else "", False)
        tensors, aliases = dedup_tensors(resident)
        rpath = self.work / "resident.safetensors"
        save_file(tensors, str(rpath))
        merge([rpath, *self.previous], file, metadata)
        return {**aliases, **self.aliases}

    def layer_infos(self, model: nn.Module) -> dict[str, dict[str, Any]]:
        stages = state_of(model).layer_stage
        out: dict[str, dict[str, Any]] = {}
        for name, m in model.named_modules():
            if name in self.infos:
                info = dict(self.infos[name])
            elif in_block(name, self.prefixes) or not callable(getattr(m, "torchslim_layer_info", None)):
                continue
            else:
                info = {"module": type(m).__name__, **m.torchslim_layer_info()}
            if name in stages:
                info["stage"] = stages[name]
            out[name] = info
        return out


def fp32_bytes(files: TensorFiles, names: list[str]) -> int:
    """Bytes of ``names`` once loaded (floating point tensors as float32)."""
    total = 0
    for n in names:
        _, info, _ = files.where[n]
        size = files.nbytes(n)
        total += size * 4 // max(1, _itemsize(info["dtype"])) if info["dtype"].startswith(("F", "BF")) else size
    return total


def _itemsize(dtype: str) -> int:
    from torchslim.scale.files import DTYPES

    t = DTYPES.get(dtype)
    return torch.empty(0, dtype=t).element_size() if t is not None else 4


def memory_needs(files: TensorFiles, prefixes: list[str]) -> tuple[int, int, int]:
    """``(whole model, largest block, everything outside the blocks)`` in bytes, floating point as float32."""
    per_block = {p: [n for n in files.where if n.startswith(p + ".")] for p in prefixes}
    outside = [n for n in files.where if not in_block(n, prefixes)]
    blocks = [fp32_bytes(files, names) for names in per_block.values()]
    rest = fp32_bytes(files, outside)
    return sum(blocks) + rest, max(blocks, default=0), rest


def check_fits(spec: str, largest: int, resident: int, max_memory: int) -> None:
    if largest + resident > max_memory:
        raise ConfigError(f"{spec}: one transformer block needs {human(largest)} and the layers outside the blocks "
                          f"{human(resident)}, more than --max-memory {human(max_memory)}: layer-wise onloading "
                          "holds at least one block at a time")


def compress_onloaded(spec: str, configs: BaseConfig | list[BaseConfig], out: str | Path, *,
                      max_memory: str | int | None = None, cache_memory: str | int | None = None,
                      data: dict[str, Any] | None = None, **context: Any) -> tuple[Any, OnloadStats]:
    """Apply ``configs`` (block-by-block calibrated methods: GPTQ, AWQ, W8A8, Wanda, SparseGPT) to the model
    ``spec`` names (a Hugging Face folder or a zoo name with a weights folder) with layer-wise onloading, and
    save the artifact at ``out``. ``max_memory`` refuses a model one of whose blocks does not fit;
    ``cache_memory`` (default: a quarter of ``max_memory``) is how much of the cached block inputs stay in memory
    before spilling to ``out/.torchslim-onload``. Context keywords (``calibration=``) go to the handlers; by
    default they calibrate on the model's task. Returns ``(LoadedModel with the skeleton, stats)``."""
    t0 = time.perf_counter()
    configs = list(configs) if isinstance(configs, (list, tuple)) else [configs]
    if not configs or not all(isinstance(c, BaseConfig) for c in configs):
        raise ConfigError("expected a torchslim config or a non-empty list of them")
    for cfg in configs:
        if "calibration" not in get_entry(cfg).uses:
            raise ConfigError(f"{type(cfg).__name__} does not calibrate block by block, which layer-wise onloading "
                              f"needs (GPTQ, AWQ, W8A8 static, Wanda, SparseGPT do); load the model whole for it")
    from torchslim.artifact.checks import check_target

    check_target(Path(out))                   # refuse a folder that is not ours before any work
    with bounded_heap() as bounded:           # freed activations leave the process: the peak is the point here
        loaded, stats = _compress_onloaded(spec, configs, Path(out), max_memory, cache_memory, data, context, t0)
    stats.bounded_heap = bounded
    return loaded, stats


def _compress_onloaded(spec: str, configs: list[BaseConfig], out: Path, max_memory: str | int | None,
                       cache_memory: str | int | None, data: dict[str, Any] | None, context: dict[str, Any],
                       t0: float) -> tuple[Any, OnloadStats]:
    src = open_source(spec, **(data or {}))
    model = src.model
    total, largest, resident = memory_needs(src.files, block_prefixes(model))
    cap = parse_bytes(max_memory) if max_memory is not None else None
    if cap is not None:
        check_fits(spec, largest, resident, cap)
    budget = parse_bytes(cache_memory) if cache_memory is not None else (cap // 4 if cap is not None else None)
    log.info("onloading %s: %s of weights, largest block %s", spec, human(total), human(largest))
    streamer = BlockStreamer(model, src.files, out / ONLOAD_DIR, budget)
    streamer.stats.resident_bytes, streamer.stats.cache_budget = resident, budget
    ctx = ApplyContext.from_kwargs(**({"task": src.loaded.task} | context))
    attach_onloader(model, streamer)
    try:
        for cfg in configs:
            try:
                apply_(model, cfg, ctx)
            except (RuntimeError, NotImplementedError) as e:
                if "meta" not in str(e):
                    raise
                raise ConfigError(f"{type(cfg).__name__} reached weights outside the block it was given (a whole-model "
                                  "step): it cannot run with layer-wise onloading") from None
            streamer.end_stage(type(cfg).__name__)
        save(model, out, source=src.loaded.source, streamed=streamer)
    finally:
        attach_onloader(model, None)
        shutil.rmtree(out / ONLOAD_DIR, ignore_errors=True)
    streamer.stats.seconds = time.perf_counter() - t0
    log.info("%s", streamer.stats.line())
    return src.loaded, streamer.stats


def model_bytes(spec: str) -> int:
    """The model's weights once loaded (floating point as float32), from its files' headers."""
    from torchslim.scale.source import source_folder

    folder, _ = source_folder(spec)
    files = TensorFiles(sorted(folder.glob("*.safetensors")))
    return fp32_bytes(files, list(files.where))

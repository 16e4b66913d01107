"""Reading and writing safetensors files one tensor at a time.

Reading: a tensor is read with ``readinto`` straight into its own memory (no mapping of the whole file, so a
process's resident set holds only the tensors it asked for, and a memory cap measures them). Writing: several
safetensors files are merged into one, tensor by tensor, in the order and with the header layout the
safetensors library writes itself, so a merged file is byte for byte the file ``save_file`` would write from
the same tensors.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch

from torchslim.core.errors import ArtifactError

DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3": torch.float8_e4m3fn, "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16,
    "BF16": torch.bfloat16, "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "U64": torch.uint64,
}
NAMES = {v: k for k, v in DTYPES.items()}
# safetensors writes tensors by dtype, largest (in its enum order) first, then by name
_RANK = {name: i for i, name in enumerate(
    ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16",
     "I32", "U32", "F32", "F64", "I64", "U64"])}


def read_header(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """``({name: {"dtype", "shape", "data_offsets"}}, data start)`` of a safetensors file (metadata dropped)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ArtifactError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 << 20:
            raise ArtifactError(f"{path}: safetensors header of {n} bytes is implausible")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ArtifactError(f"{path}: unreadable safetensors header") from None
    header.pop("__metadata__", None)
    return header, 8 + n


class TensorFiles:
    """The tensors of one or more safetensors files, by name, read on demand."""

    def __init__(self, files: list[Path]) -> None:
        self.where: dict[str, tuple[Path, dict[str, Any], int]] = {}
        for path in files:
            header, start = read_header(path)
            for name, info in header.items():
                self.where[name] = (path, info, start)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def nbytes(self, name: str) -> int:
        _, info, _ = self.where[name]
        begin, end = info["data_offsets"]
        return end - begin

    def read(self, name: str) -> torch.Tensor:
        path, info, start = self.where[name]
        dtype = DTYPES.get(info["dtype"])
        if dtype is None:
            raise ArtifactError(f"{path}: tensor '{name}' has dtype {info['dtype']}, which torchslim does not read")
        begin, end = info["data_offsets"]
        t = torch.empty(info["shape"], dtype=dtype)
        if t.numel() * t.element_size() != end - begin:
            raise ArtifactError(f"{path}: tensor '{name}' has {end - begin} bytes for shape {info['shape']}")
        if end > begin:
            with open(path, "rb") as f:
                f.seek(start + begin)
                if f.readinto(memoryview(t.view(-1).view(torch.uint8).numpy())) != end - begin:
                    raise ArtifactError(f"{path}: truncated at tensor '{name}'")
        return t


def merge(files: list[Path], out: Path, metadata: dict[str, str] | None = None, chunk: int = 1 << 24) -> None:
    """Write one safetensors file holding every tensor of ``files`` (names must not repeat), copying the
    bytes ``chunk`` at a time: the same bytes ``safetensors.torch.save_file`` writes from those tensors."""
    entries: list[tuple[str, dict[str, Any], Path, int]] = []
    for path in files:
        header, start = read_header(path)
        entries += [(name, info, path, start) for name, info in header.items()]
    names = [e[0] for e in entries]
    if len(set(names)) != len(names):
        raise ArtifactError(f"{out}: a tensor name repeats across the merged files")
    entries.sort(key=lambda e: (-_RANK[e[1]["dtype"]], e[0]))
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, info, _, _ in entries:
        size = info["data_offsets"][1] - info["data_offsets"][0]
        header[name] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(out, "wb") as dst:
        dst.write(struct.pack("<Q", len(raw)) + raw)
        for _, info, path, start in entries:
            begin, end = info["data_offsets"]
            with open(path, "rb") as src:
                src.seek(start + begin)
                left = end - begin
                while left:
                    data = src.read(min(chunk, left))
                    if not data:
                        raise ArtifactError(f"{path}: truncated while merging")
                    dst.write(data)
                    left -= len(data)


def parse_bytes(text: str | int) -> int:
    """``"700MB"``, ``"1.5GiB"``, ``"512M"``, ``"2G"`` or a number of bytes -> bytes (MB = 10^6, MiB = 2^20)."""
    from torchslim.core.errors import ConfigError

    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        s = str(text).strip().upper().replace(" ", "")
        units = {"TIB": 1 << 40, "GIB": 1 << 30, "MIB": 1 << 20, "KIB": 1 << 10, "TB": 10**12, "GB": 10**9,
                 "MB": 10**6, "KB": 10**3, "T": 10**12, "G": 10**9, "M": 10**6, "K": 10**3, "B": 1}
        unit = next((u for u in units if s.endswith(u)), "")
        try:
            value = int(float(s[: len(s) - len(unit)]) * units.get(unit, 1))
        except ValueError:
            raise ConfigError(f"cannot read a memory size from {str(text)!r} (e.g. 700MB, 1.5GiB)") from None
    if value <= 0:
        raise ConfigError(f"a memory size must be positive, got {text!r}")
    return value


def human(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} GB"
    return f"{n / 1e6:.0f} MB" if n >= 1e7 else f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.0f} KB"

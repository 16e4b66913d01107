"""``SparseLinear``: a linear layer with an unstructured or N:M mask, stored compressed.

In memory the layer keeps a dense ``weight`` Parameter (zeros where pruned, trainable for
recovery fine-tuning) and a bool ``mask`` buffer (not persistent). Its ``state_dict``, which is
what artifacts store, holds the compressed form instead (see :mod:`sparse_format` for byte counts):

* ``bitmask``: ``values`` [nnz] + ``mask_bits`` [ceil(out*in/8)] uint8
* ``csr``:     ``values`` [nnz] + ``crow_indices`` [out+1] int32 + ``col_indices`` [nnz] int16/int32
* ``dense``:   ``weight`` [out, in] (the mask is rebuilt as ``weight != 0``)

plus ``bias``; values keep the weight's dtype. Loading (also with ``assign=True``) rebuilds
``weight`` and ``mask``. Forward: in training mode ``F.linear(x, weight * mask)`` (pruned weights
get zero gradient); in eval mode the chosen kernel (:func:`kernel_choice`).
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from torchslim.core.config import BaseConfig, config_from_dict
from torchslim.core.errors import ArtifactError, ConfigError, TorchSlimError
from torchslim.core.modules import register_module_format
from torchslim.pruning import sparse_format as SF
from torchslim.pruning.config import SparseKernel, Storage
from torchslim.pruning.masks import parse_nm

STORED_KEYS: dict[Storage, tuple[str, ...]] = {
    Storage.DENSE: ("weight",),
    Storage.BITMASK: ("values", "mask_bits"),
    Storage.CSR: ("values", "crow_indices", "col_indices"),
}
_MARKER = {Storage.CSR: "crow_indices", Storage.BITMASK: "mask_bits", Storage.DENSE: "weight"}

# Where torch's CSR matmul beat dense fp32 F.linear at ONE token (decode) on this project's CPU.
# Source: benchmarks/pruning/csr_kernel.py -> docs/results/pruning_csr_kernel.md (median of interleaved
# repeats). Rows: (torch threads, min weight elements, min sparsity, slowest measured speedup of the
# SmolLM2-135M shapes that size); the first matching row applies, else the dense kernel. At 1 thread the
# decoder-block matrices (576x576 .. 1536x576) ran 1.28-1.61x faster at 95%, 1.97-2.87x at 98%, and
# slower at <= 90% (0.77-0.9x at 90%); the 576x49152 head 1.87x at 85% (1.12x at 75%: too close to call).
# At 2 threads on this shared, busy machine MKL's parallel CSR kernel stalled to ~7 ms per call at one
# token (dense: tens to hundreds of µs): no row, so dense. Earlier runs at 1 thread agreed within noise.
CSR_FASTER_AT: tuple[tuple[int, int, float, float], ...] = (
    (1, 20_000_000, 0.85, 1.87),  # output-head sized (memory-bound): pays from 85%
    (1, 300_000, 0.95, 1.28),     # decoder-block sized: pays from 95%
)
DENSE_REASON = "no speed gain from sparsity here: dense kernel"


def _enum(cls: type, value: Any, what: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        known = ", ".join(e.value for e in cls)
        raise ConfigError(f"unknown {what} {value!r} (known: {known})") from None


class KernelChoice(NamedTuple):
    kernel: SparseKernel
    reason: str
    faster: bool  # measured faster than the dense kernel on this kind of machine


def measured_csr_speedup(out_features: int, in_features: int, sparsity: float, threads: int) -> float | None:
    """The measured CSR-over-dense speedup (one token, fp32, CPU) that applies, or None."""
    for n_threads, min_elements, min_sparsity, speedup in CSR_FASTER_AT:
        if threads == n_threads and out_features * in_features >= min_elements and sparsity >= min_sparsity:
            return speedup
    return None


def kernel_choice(out_features: int, in_features: int, sparsity: float, device_type: str,
                  kernel: SparseKernel = SparseKernel.AUTO, pattern: str | None = None,
                  dtype: torch.dtype = torch.float32, threads: int | None = None) -> KernelChoice:
    """Decide the eval kernel. AUTO picks CSR only where :data:`CSR_FASTER_AT` measured it faster
    (``threads``: torch's intra-op threads, default the current setting)."""
    kernel = _enum(SparseKernel, kernel, "sparse kernel")
    threads = torch.get_num_threads() if threads is None else threads
    if kernel is SparseKernel.SEMI_STRUCTURED:
        if pattern != "2:4":
            raise ConfigError(f"the semi_structured kernel needs the 2:4 pattern, got {pattern!r}")
        if device_type != "cuda":
            return KernelChoice(SparseKernel.DENSE,
                                f"2:4 semi-structured runs on CUDA only: dense kernel on {device_type}", False)
        return KernelChoice(kernel, "2:4 semi-structured (torch.sparse.to_sparse_semi_structured); "
                            "speed not measured", False)
    if kernel is SparseKernel.DENSE:
        return KernelChoice(kernel, "dense kernel requested", False)
    speedup = measured_csr_speedup(out_features, in_features, sparsity, threads) if device_type == "cpu" else None
    fp32 = dtype == torch.float32
    if kernel is SparseKernel.CSR:
        note = f"measured {speedup:.1f}x faster" if speedup and fp32 else "not measured faster than dense here"
        return KernelChoice(kernel, f"csr kernel requested ({note})", bool(speedup and fp32))
    if speedup is not None and fp32:
        return KernelChoice(SparseKernel.CSR, f"csr matmul measured {speedup:.1f}x faster than dense "
                            f"at this sparsity (one token, fp32, cpu, threads={threads})", True)
    return KernelChoice(SparseKernel.DENSE, DENSE_REASON, False)


def csr_linear(x2: torch.Tensor, weight_csr: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x2 @ W.T + bias`` for a 2-D input and a ``torch.sparse_csr`` weight ``[out, in]``."""
    y = torch.sparse.mm(weight_csr, x2.t()).t()
    return y + bias if bias is not None else y


@register_module_format
class SparseLinear(nn.Module):
    """Masked linear layer with compressed storage. Build with :meth:`from_linear`."""

    stands_for = nn.Linear   # selectors' nn.Linear rules pick it (quantize_ after prune_ reaches it)
    keeps_zeros = True       # quantization keeps its pruned weights at exactly zero (quantization.sparse_quant)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 storage: Storage = Storage.AUTO, kernel: SparseKernel = SparseKernel.AUTO,
                 pattern: str | None = None, config: BaseConfig | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        if pattern is not None:
            parse_nm(pattern)
        self.in_features, self.out_features = in_features, out_features
        self.pattern, self.config = pattern, config
        self.storage_request = _enum(Storage, storage, "storage")
        self.kernel_request = _enum(SparseKernel, kernel, "sparse kernel")
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=dtype, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool, device=device),
                             persistent=False)
        self._cache: dict[str, Any] = {}
        self._choices: dict[tuple[str, torch.dtype, int], KernelChoice] = {}
        self._semi_error: str | None = None
        self.storage = self._resolve_storage()

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_linear(cls, lin: nn.Linear, mask: torch.Tensor, *, storage: Storage = Storage.AUTO,
                    kernel: SparseKernel = SparseKernel.AUTO, pattern: str | None = None,
                    config: BaseConfig | None = None) -> SparseLinear:
        """A SparseLinear computing ``lin`` with the weights where ``mask`` is False set to zero."""
        if not isinstance(lin, nn.Linear):
            raise ConfigError(f"SparseLinear.from_linear needs an nn.Linear, got {type(lin).__name__}")
        w = lin.weight
        m = cls(lin.in_features, lin.out_features, lin.bias is not None, storage=storage, kernel=kernel,
                pattern=pattern, config=config, dtype=w.dtype, device=w.device)
        with torch.no_grad():
            m.weight.copy_(w)
            if lin.bias is not None:
                m.bias.copy_(lin.bias)
        m.weight.requires_grad_(w.requires_grad)
        m.set_mask(mask)
        return m.train(lin.training)

    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask (True keeps) and zero the pruned weights."""
        self._check_mask(mask)
        with torch.no_grad():
            self.mask.copy_(mask)
            self.weight.mul_(self.mask)
        self.storage = self._resolve_storage()
        self._invalidate()

    def _check_mask(self, mask: torch.Tensor) -> None:
        shape = (self.out_features, self.in_features)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != shape:
            got = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ConfigError(f"SparseLinear mask must be a bool tensor of shape {shape}, got {got}")
        if self.pattern is None:
            return
        n, m = parse_nm(self.pattern)
        if self.in_features % m:
            raise ConfigError(f"{self.pattern} sparsity needs the input size ({self.in_features}) "
                              f"to be a multiple of {m}")
        if bool((mask.reshape(self.out_features, -1, m).sum(-1) > n).any()):
            raise ConfigError(f"mask does not follow the {self.pattern} pattern: "
                              f"a group of {m} inputs keeps more than {n}")

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the masked weight (same device, dtype and train/eval mode)."""
        w = self.weight
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w * self.mask)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin.train(self.training)

    @property
    def nnz(self) -> int:
        return int(self.mask.sum().item())

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / (self.out_features * self.in_features)

    def _resolve_storage(self) -> Storage:
        return SF.choose_storage(self.storage_request, self.out_features, self.in_features, self.nnz,
                                 self.weight.element_size())

    def _invalidate(self) -> None:
        self._cache, self._choices, self._semi_error = {}, {}, None

    # -- execution -----------------------------------------------------------------------
    def kernel_for(self, device_type: str) -> KernelChoice:
        """The eval kernel for inputs on ``device_type`` (cached per dtype and thread count until the mask changes)."""
        key = (device_type, self.weight.dtype, torch.get_num_threads())
        if key not in self._choices:
            self._choices[key] = kernel_choice(self.out_features, self.in_features, self.sparsity, device_type,
                                               self.kernel_request, self.pattern, self.weight.dtype, key[2])
        return self._choices[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.linear(x, self.weight * self.mask, self.bias)
        kernel = self.kernel_for(x.device.type).kernel
        needs_grad = torch.is_grad_enabled() and (self.weight.requires_grad or x.requires_grad)
        if kernel is SparseKernel.CSR and not needs_grad:
            return self._csr_forward(x)
        if kernel is SparseKernel.SEMI_STRUCTURED and not needs_grad:
            w = self._semi_structured_weight()
            if w is not None:
                return F.linear(x, w, self.bias)
        return F.linear(x, self.weight, self.bias)  # pruned weights are already zero

    def _cached(self, kind: str, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        w, m = self.weight, self.mask
        key = (kind, w.data_ptr(), w._version, m.data_ptr(), m._version, w.dtype, w.device)
        if self._cache.get("key") != key:
            self._cache = {"key": key, "value": build()}
        return self._cache["value"]

    def _csr_forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        # MKL's CPU CSR matmul has no bf16/fp16: those weights compute in fp32
        dt = w.dtype if w.device.type != "cpu" or w.dtype in (torch.float32, torch.float64) else torch.float32
        w_csr = self._cached("csr", lambda: SF.torch_csr(w.detach(), self.mask, dt))
        x2 = x.reshape(-1, self.in_features).to(dt)
        y = csr_linear(x2, w_csr, None if self.bias is None else self.bias.to(dt))
        return y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)

    def _semi_structured_weight(self) -> torch.Tensor | None:
        if self._semi_error is not None:
            return None
        try:
            to_semi = torch.sparse.to_sparse_semi_structured
            return self._cached("semi", lambda: to_semi(self.weight.detach().contiguous()))
        except (RuntimeError, ValueError, AssertionError) as e:
            self._semi_error = str(e).splitlines()[0] if str(e) else type(e).__name__
            warnings.warn(f"SparseLinear: 2:4 semi-structured kernel unavailable ({self._semi_error}); "
                          "using the dense kernel", RuntimeWarning, stacklevel=3)
            return None

    def train(self, mode: bool = True) -> SparseLinear:
        self._cache = {}  # weights may have changed through .data, which keeps _version
        return super().train(mode)

    def __getstate__(self) -> dict[str, Any]:  # deepcopy/pickle: kernel caches (sparse tensors) are derived
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def _apply(self, fn, recurse=True):  # .to()/.cuda()/.half(): drop kernel caches, re-resolve AUTO storage
        out = super()._apply(fn, recurse)
        self._invalidate()
        self.storage = self._resolve_storage()
        return out

    def extra_repr(self) -> str:
        pattern = f", pattern={self.pattern}" if self.pattern else ""
        return (f"{self.in_features}->{self.out_features}, sparsity={self.sparsity:.3f}{pattern}, "
                f"storage={self.storage.value}, bias={self.bias is not None}")

    # -- state dict: compressed ----------------------------------------------------------
    def compressed_state(self) -> dict[str, torch.Tensor]:
        """The stored tensors of the weight under the current storage (bias excluded)."""
        w = self.weight.detach()
        if self.storage is Storage.DENSE:
            return {"weight": w}
        if self.storage is Storage.BITMASK:
            values, bits = SF.to_bitmask(w, self.mask)
            return {"values": values, "mask_bits": bits}
        crow, cols, values = SF.to_csr(w, self.mask)
        return {"values": values, "crow_indices": crow, "col_indices": cols}

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        state = self.compressed_state()
        if self.storage is Storage.DENSE and keep_vars:
            state["weight"] = self.weight
        for name, t in state.items():
            destination[prefix + name] = t
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        for hook in self._load_state_dict_pre_hooks.values():
            hook(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        # the stored keys say which storage was saved; a module loads any of them
        storage = next((s for s, marker in _MARKER.items() if marker in own), self.storage)
        expected = STORED_KEYS[storage] + (("bias",) if self.bias is not None else ())
        if strict:
            missing_keys.extend(prefix + k for k in expected if k not in own)
            unexpected_keys.extend(prefix + k for k in own if k not in expected)
        assign = bool(local_metadata.get("assign_to_params_buffers", False))
        if all(k in own for k in STORED_KEYS[storage]):
            try:
                weight, mask = self._decode(storage, own)
            except (ConfigError, TypeError) as e:
                error_msgs.append(f"While loading {prefix or 'the module'} (SparseLinear, {storage.value}): {e}")
            else:
                self._install(weight, mask, storage, assign)
        if self.bias is not None and "bias" in own:
            self._load_bias(own["bias"], prefix + "bias", assign, error_msgs)

    def _decode(self, storage: Storage, own: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.out_features, self.in_features)
        if not all(isinstance(own[k], torch.Tensor) for k in STORED_KEYS[storage]):
            raise TypeError("expected tensors")
        if storage is Storage.DENSE:
            w = own["weight"]
            if tuple(w.shape) != shape:
                raise ConfigError(f"size mismatch: weight {tuple(w.shape)} in the checkpoint, {shape} in the model")
            return w, w != 0
        if storage is Storage.BITMASK:
            return SF.from_bitmask(own["values"], own["mask_bits"], shape)
        return SF.from_csr(own["crow_indices"], own["col_indices"], own["values"], shape)

    def _install(self, weight: torch.Tensor, mask: torch.Tensor, storage: Storage, assign: bool) -> None:
        with torch.no_grad():
            if assign:
                self.weight = nn.Parameter(weight, requires_grad=self.weight.requires_grad)
                self.mask = mask.to(weight.device)
            else:
                self.weight.copy_(weight)
                self.mask.copy_(mask)
        self.storage = storage
        self._invalidate()

    def _load_bias(self, b: Any, key: str, assign: bool, error_msgs: list[str]) -> None:
        if not isinstance(b, torch.Tensor) or b.shape != self.bias.shape:
            got = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            error_msgs.append(f"size mismatch for {key}: {got} in the checkpoint, "
                              f"{tuple(self.bias.shape)} in the model")
            return
        with torch.no_grad():
            if assign:
                self.bias = nn.Parameter(b, requires_grad=self.bias.requires_grad)
            else:
                self.bias.copy_(b)

    # -- artifact ------------------------------------------------------------------------
    def torchslim_layer_info(self) -> dict[str, Any]:
        nnz, numel = self.nnz, self.out_features * self.in_features
        choice = self.kernel_for(self.weight.device.type)
        stored = list(STORED_KEYS[self.storage])
        nbytes = SF.storage_bytes(self.storage, self.out_features, self.in_features, nnz, self.weight.element_size())
        technique = getattr(self.config, "technique", "unstructured") if self.config is not None else "unstructured"
        return {
            "technique": technique,
            "config": self.config.to_dict() if self.config is not None else None,
            "storage": self.storage.value,
            "sparsity": 1.0 - nnz / numel,
            "nnz": nnz,
            "pattern": self.pattern,
            "kernel": choice.kernel.value,
            "kernel_request": self.kernel_request.value,
            "kernel_note": choice.reason,
            "kernel_faster": choice.faster,
            "bytes": nbytes,
            "dtype": str(self.weight.dtype).removeprefix("torch."),
            "shape": [self.out_features, self.in_features],
            "bias": self.bias is not None,
            # for torchslim.eval.size: the packed weight's stored entries, plus the dense Parameter
            "weight_nonzero": nnz,
            "weight_tensors": stored + ([] if "weight" in stored else ["weight"]),
        }

    @classmethod
    def from_layer_info(cls, original: nn.Module, info: dict[str, Any]) -> SparseLinear:
        """An empty layer whose state_dict keys and shapes match the saved one (``nnz`` kept elements)."""
        try:
            out_f, in_f = (int(d) for d in info["shape"])
            dtype = getattr(torch, str(info["dtype"]), None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown dtype {info['dtype']!r}")
            config = config_from_dict(info["config"]) if info.get("config") else None
            nnz = int(info["nnz"])
            m = cls(in_f, out_f, bool(info.get("bias", getattr(original, "bias", None) is not None)),
                    storage=Storage(info["storage"]), kernel=SparseKernel(info.get("kernel_request", "auto")),
                    pattern=info.get("pattern"), config=config, dtype=dtype)
        except (KeyError, ValueError, TypeError, TorchSlimError) as e:
            raise ArtifactError(f"invalid SparseLinear layer info ({e})") from None
        if not 0 <= nnz <= out_f * in_f:
            raise ArtifactError(f"invalid SparseLinear layer info (nnz {nnz} for shape [{out_f}, {in_f}])")
        m.mask.view(-1)[nnz:] = False  # placeholder with the saved count; loading fills the real mask
        m.storage = m._resolve_storage()
        m._invalidate()
        return m

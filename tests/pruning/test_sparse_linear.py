import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.artifact import format as artifact
from torchslim.core.errors import ArtifactError, ConfigError
from torchslim.core.modules import module_format
from torchslim.eval.size import count_parameters, weight_storage
from torchslim.pruning import sparse_linear as SL
from torchslim.pruning.config import SparseKernel, Storage, UnstructuredConfig
from torchslim.pruning.masks import layer_mask, nm_mask
from torchslim.pruning.sparse_linear import SparseLinear, kernel_choice


def linear_and_mask(in_f=48, out_f=40, sparsity=0.75, bias=True, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f, bias=bias).to(dtype)
    return lin, layer_mask(torch.rand(out_f, in_f), sparsity)


def reference(lin, mask, x):
    return F.linear(x, lin.weight * mask, lin.bias)


def test_registered_as_module_format():
    assert module_format("SparseLinear") is SparseLinear


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("kernel", [SparseKernel.DENSE, SparseKernel.CSR])
def test_eval_output_matches_masked_dense_linear(kernel, dtype, tol):
    lin, mask = linear_and_mask(dtype=dtype)
    m = SparseLinear.from_linear(lin, mask, kernel=kernel).eval()
    assert m.kernel_for("cpu").kernel is kernel
    x = torch.randn(2, 3, 48).to(dtype)
    with torch.no_grad():
        out, ref = m(x), reference(lin, mask, x)
    assert out.shape == (2, 3, 40) and out.dtype == dtype
    assert (out.float() - ref.float()).abs().max() <= tol * ref.float().abs().max()
    assert (m._cache.get("key", ("none",))[0] == "csr") == (kernel is SparseKernel.CSR)
    assert torch.equal(m.weight * ~mask, torch.zeros_like(m.weight))  # pruned weights are zero in memory


def test_csr_cache_follows_in_place_weight_changes():
    lin, mask = linear_and_mask()
    m = SparseLinear.from_linear(lin, mask, kernel=SparseKernel.CSR).eval()
    x = torch.randn(4, 48)
    with torch.no_grad():
        m(x)
        m.weight.mul_(2.0)  # bumps the weight's version: the CSR copy is rebuilt
        assert torch.allclose(m(x), F.linear(x, 2 * lin.weight * mask, lin.bias), atol=1e-5)
        m.train()
        m.weight.data.mul_(0.5)  # .data keeps the version; eval() drops the cache
        m.eval()
        assert torch.allclose(m(x), reference(lin, mask, x), atol=1e-5)


def test_eval_with_autograd_uses_the_differentiable_dense_path():
    lin, mask = linear_and_mask()
    m = SparseLinear.from_linear(lin, mask, kernel=SparseKernel.CSR).eval()
    m(torch.randn(3, 48)).sum().backward()
    assert m.weight.grad is not None and "key" not in m._cache


@pytest.mark.parametrize("opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda p: torch.optim.AdamW(p, lr=0.01),
])
def test_training_keeps_pruned_weights_at_zero(opt):
    lin, mask = linear_and_mask()
    m = SparseLinear.from_linear(lin, mask).train()
    before = m.weight.detach().clone()
    o = opt(m.parameters())
    for _ in range(3):
        o.zero_grad()
        F.mse_loss(m(torch.randn(8, 48)), torch.randn(8, 40)).backward()
        assert torch.equal(m.weight.grad[~mask], torch.zeros(int((~mask).sum())))
        o.step()
    assert torch.equal(m.weight[~mask], torch.zeros(int((~mask).sum())))
    assert not torch.equal(m.weight[mask], before[mask])  # kept weights did train


def test_set_mask_and_to_linear():
    lin, mask = linear_and_mask(sparsity=0.5)
    m = SparseLinear.from_linear(lin, mask)
    assert m.nnz == int(mask.sum()) and m.sparsity == pytest.approx(0.5)
    tighter = mask & layer_mask(torch.rand(40, 48), 0.5)
    m.set_mask(tighter)
    assert m.nnz == int(tighter.sum()) and torch.equal(m.mask, tighter)
    assert torch.equal(m.weight[~tighter], torch.zeros(int((~tighter).sum())))
    plain = m.to_linear()
    assert type(plain) is nn.Linear and torch.equal(plain.weight, lin.weight.detach() * tighter)
    x = torch.randn(5, 48)
    assert torch.allclose(plain(x), m(x), atol=1e-6)


def test_mask_validation():
    lin, mask = linear_and_mask(in_f=16, out_f=8)
    with pytest.raises(ConfigError, match="bool tensor"):
        SparseLinear.from_linear(lin, mask.float())
    with pytest.raises(ConfigError, match="bool tensor"):
        SparseLinear.from_linear(lin, mask[:4])
    with pytest.raises(ConfigError, match="2:4 pattern"):
        SparseLinear.from_linear(lin, torch.ones(8, 16, dtype=torch.bool), pattern="2:4")
    with pytest.raises(ConfigError, match="nn.Linear"):
        SparseLinear.from_linear(nn.Conv1d(16, 8, 1), mask)
    with pytest.raises(ConfigError, match="unknown storage 'zip'"):
        SparseLinear.from_linear(lin, mask, storage="zip")
    with pytest.raises(ConfigError, match="unknown sparse kernel"):
        SparseLinear.from_linear(lin, mask, kernel="fast")
    m = SparseLinear.from_linear(lin, nm_mask(torch.rand(8, 16), 2, 4), pattern="2:4")
    assert m.pattern == "2:4" and m.sparsity == 0.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("storage,keys", [
    (Storage.BITMASK, {"values", "mask_bits", "bias"}),
    (Storage.CSR, {"values", "crow_indices", "col_indices", "bias"}),
    (Storage.DENSE, {"weight", "bias"}),
])
def test_state_dict_is_compressed_and_round_trips(storage, keys, dtype):
    lin, mask = linear_and_mask(dtype=dtype)
    m = SparseLinear.from_linear(lin, mask, storage=storage).eval()
    sd = m.state_dict()
    assert set(sd) == keys and m.storage is storage
    for k in ("values", "weight"):
        if k in sd:
            assert sd[k].dtype == dtype
    info = m.torchslim_layer_info()
    assert info["bytes"] == sum(t.nbytes for k, t in sd.items() if k != "bias")
    # into an empty skeleton, as the artifact loader does
    skel = SparseLinear.from_layer_info(nn.Linear(48, 40), info)
    assert {k: v.shape for k, v in skel.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    skel.load_state_dict(sd, strict=True, assign=True)
    # and by copy into a module built differently
    other = SparseLinear.from_linear(nn.Linear(48, 40).to(dtype), torch.ones(40, 48, dtype=torch.bool), storage=storage)
    other.load_state_dict(sd, strict=True)
    x = torch.randn(3, 48).to(dtype)
    with torch.no_grad():
        for loaded in (skel.eval(), other.eval()):
            assert torch.equal(loaded.weight, m.weight) and torch.equal(loaded(x), m(x))
            if storage is not Storage.DENSE:
                assert torch.equal(loaded.mask, mask)


def test_load_detects_storage_and_reports_bad_keys():
    lin, mask = linear_and_mask()
    csr = SparseLinear.from_linear(lin, mask, storage=Storage.CSR).state_dict()
    m = SparseLinear.from_linear(nn.Linear(48, 40), torch.ones(40, 48, dtype=torch.bool), storage=Storage.BITMASK)
    m.load_state_dict(csr)
    assert m.storage is Storage.CSR and torch.equal(m.mask, mask)
    broken = dict(csr)
    del broken["col_indices"]
    broken["extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="col_indices") as e:
        m.load_state_dict(broken)
    assert "extra" in str(e.value)
    res = m.load_state_dict(broken, strict=False)  # reported, not raised; the weight is left as it was
    assert res.missing_keys == ["col_indices"] and res.unexpected_keys == ["extra"]
    assert torch.equal(m.mask, mask)
    bad = dict(csr, values=csr["values"][:-1])
    with pytest.raises(RuntimeError, match="disagree"):
        m.load_state_dict(bad)


def test_kernel_choice_rules():
    dense = kernel_choice(576, 576, 0.5, "cpu", SparseKernel.AUTO, None)
    assert dense == (SparseKernel.DENSE, SL.DENSE_REASON, False)
    assert SL.DENSE_REASON == "no speed gain from sparsity here: dense kernel"
    assert kernel_choice(576, 576, 0.99, "cuda").kernel is SparseKernel.DENSE  # not measured on CUDA
    assert kernel_choice(576, 576, 0.99, "cpu", dtype=torch.bfloat16).kernel is SparseKernel.DENSE
    assert kernel_choice(576, 576, 0.5, "cpu", SparseKernel.CSR).kernel is SparseKernel.CSR
    assert kernel_choice(576, 576, 0.5, "cpu", SparseKernel.SEMI_STRUCTURED, "2:4").kernel is SparseKernel.DENSE
    semi = kernel_choice(576, 576, 0.5, "cuda", SparseKernel.SEMI_STRUCTURED, "2:4")
    assert semi.kernel is SparseKernel.SEMI_STRUCTURED
    with pytest.raises(ConfigError, match="2:4"):
        kernel_choice(576, 576, 0.75, "cuda", SparseKernel.SEMI_STRUCTURED, "1:4")


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_auto_kernel_follows_the_measured_table(one_thread):
    assert SL.CSR_FASTER_AT, "the measured table is empty"
    for threads, min_elements, min_sparsity, speedup in SL.CSR_FASTER_AT:
        choice = kernel_choice(min_elements, 1, min_sparsity, "cpu", threads=threads)
        assert choice.kernel is SparseKernel.CSR and choice.faster and f"{speedup:.1f}x" in choice.reason
    for sparsity in (0.0, 0.5, 0.9):  # measured slower than dense at decoder-block sizes
        assert kernel_choice(1536, 576, sparsity, "cpu", threads=1).kernel is SparseKernel.DENSE
    assert kernel_choice(1536, 576, 0.95, "cpu", threads=1).kernel is SparseKernel.CSR
    assert kernel_choice(1536, 576, 0.98, "cpu", threads=2).kernel is SparseKernel.DENSE  # no faster measurement
    assert kernel_choice(49152, 576, 0.75, "cpu", threads=1).kernel is SparseKernel.DENSE
    assert kernel_choice(49152, 576, 0.9, "cpu", threads=1).kernel is SparseKernel.CSR
    assert kernel_choice(64, 64, 0.99, "cpu", threads=1).kernel is SparseKernel.DENSE  # smaller than measured
    lin, mask = linear_and_mask(576, 1536, sparsity=0.96)
    m = SparseLinear.from_linear(lin, mask).eval()
    info = m.torchslim_layer_info()  # threads = torch's current setting (1 here)
    assert info["kernel"] == "csr" and info["kernel_faster"] and info["kernel_request"] == "auto"
    x = torch.randn(1, 576)
    with torch.no_grad():
        assert torch.allclose(m(x), reference(lin, mask, x), atol=1e-5) and m._cache["key"][0] == "csr"
    torch.set_num_threads(2)
    assert m.kernel_for("cpu").kernel is SparseKernel.DENSE  # re-decided for the new thread count
    lin, mask = linear_and_mask(576, 1536, sparsity=0.5)
    info = SparseLinear.from_linear(lin, mask).torchslim_layer_info()
    assert info["kernel"] == "dense" and info["kernel_note"] == SL.DENSE_REASON


def tiny(bias=True):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128, bias=bias), nn.GELU(), nn.Linear(128, 32))


def sparse_tiny(sparsity, storage=Storage.AUTO):
    model = tiny()
    mask = layer_mask(model[0].weight.abs(), sparsity)
    model[0] = SparseLinear.from_linear(model[0], mask, storage=storage, config=UnstructuredConfig(sparsity=0.75))
    return model.eval()


@pytest.mark.parametrize("storage", [Storage.AUTO, Storage.CSR, Storage.DENSE])
def test_artifact_round_trip(tmp_path, storage):
    model = sparse_tiny(0.75, storage)
    artifact.save(model, tmp_path / "a")
    manifest = artifact.read_manifest(tmp_path / "a")
    info = manifest["layers"]["0"]
    assert info["module"] == "SparseLinear" and info["technique"] == "unstructured"
    assert info["nnz"] == model[0].nnz and info["config"]["_type"] == "UnstructuredConfig"
    loaded = artifact.load(tmp_path / "a", model=tiny())
    assert isinstance(loaded[0], SparseLinear) and loaded[0].storage is model[0].storage
    x = torch.randn(5, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    if storage is not Storage.DENSE:
        assert torch.equal(loaded[0].mask, model[0].mask)


def test_artifact_shrinks_with_sparsity(tmp_path):
    sizes = {}
    for name, sparsity, storage in (("dense", 0.0, Storage.DENSE), ("sparse", 0.75, Storage.AUTO)):
        model = sparse_tiny(sparsity, storage)
        artifact.save(model, tmp_path / name)
        sizes[name] = (tmp_path / name / artifact.WEIGHTS).stat().st_size
    layer = 64 * 128 * 4
    # 75% sparse: fp32 values of a quarter of the weights + one bit each, versus all weights
    assert sizes["dense"] - sizes["sparse"] > 0.6 * layer


def test_size_accounting_counts_the_compressed_weight():
    model = sparse_tiny(0.75)
    sl = model[0]
    nbytes, elements = weight_storage(model)
    assert elements == 64 * 128 + 128 * 32
    assert nbytes == sl.torchslim_layer_info()["bytes"] + 128 * 32 * 4
    total, nonzero = count_parameters(model)
    assert total == 64 * 128 + 128 + 128 * 32 + 32
    assert nonzero == sl.nnz + 128 + 128 * 32 + 32


def test_bad_layer_info_is_an_artifact_error():
    info = sparse_tiny(0.75)[0].torchslim_layer_info()
    with pytest.raises(ArtifactError, match="invalid SparseLinear"):
        SparseLinear.from_layer_info(nn.Linear(64, 128), {**info, "dtype": "nonsense"})
    with pytest.raises(ArtifactError, match="nnz"):
        SparseLinear.from_layer_info(nn.Linear(64, 128), {**info, "nnz": 10**9})


def test_deepcopy_after_csr_forward():
    import copy

    lin, mask = linear_and_mask()
    m = SparseLinear.from_linear(lin, mask, kernel=SparseKernel.CSR).eval()
    x = torch.randn(2, 48)
    with torch.no_grad():
        y = m(x)
        twin = copy.deepcopy(m)  # the cached sparse CSR tensor is not copied (it has no storage to copy)
        assert torch.equal(twin(x), y) and twin.weight.data_ptr() != m.weight.data_ptr()

"""One-shot unstructured and N:M pruning through prune_: magnitude, Wanda, SparseGPT, random."""
import pytest
import torch

import torchslim
from torchslim.core.errors import ConfigError
from torchslim.pruning import UnstructuredConfig
from torchslim.pruning.sparse_linear import SparseLinear
from torchslim.zoo.tiny import build_tiny_llama, tiny_llama

IDS = torch.randint(1, 200, (1, 16), generator=torch.Generator().manual_seed(0))


def _sparse_layers(m):
    return {n: mod for n, mod in m.named_modules() if isinstance(mod, SparseLinear)}


@pytest.mark.parametrize("imp", ["magnitude", "wanda", "sparsegpt", "random"])
def test_one_shot_50_percent_every_linear_but_the_head(imp):
    lm = tiny_llama()
    m = lm.model.eval()
    torchslim.prune_(m, UnstructuredConfig(sparsity=0.5, importance=imp, n_samples=4), calibration=lm.task)
    layers = _sparse_layers(m)
    assert len(layers) == 2 * 7 and "lm_head" not in layers
    for layer in layers.values():
        assert layer.sparsity == pytest.approx(0.5, abs=0.01)
        assert torch.equal(layer.weight == 0, ~layer.mask)
    assert torch.isfinite(m(input_ids=IDS).logits).all()


def test_pruned_model_equals_masked_dense_model():
    m, ref = build_tiny_llama().eval(), build_tiny_llama().eval()
    torchslim.prune_(m, UnstructuredConfig(sparsity=0.6))
    with torch.no_grad():
        for name, layer in _sparse_layers(m).items():
            ref.get_submodule(name).weight.mul_(layer.mask)
        assert torch.allclose(m(input_ids=IDS).logits, ref(input_ids=IDS).logits, atol=1e-5)


def test_wanda_and_sparsegpt_keep_more_of_the_output_than_magnitude():
    lm = tiny_llama(seed=1)
    dense = lm.model.eval()
    batch = lm.task.calibration_batches(2, 2)[0]
    want = dense(**batch).logits
    errs = {}
    for imp in ("magnitude", "wanda", "sparsegpt"):
        m = tiny_llama(seed=1).model.eval()
        torchslim.prune_(m, UnstructuredConfig(sparsity=0.5, importance=imp, n_samples=8), calibration=lm.task)
        errs[imp] = (m(**batch).logits - want).pow(2).mean().item()
    assert errs["sparsegpt"] < errs["magnitude"] and errs["wanda"] < errs["magnitude"]


@pytest.mark.parametrize("imp", ["magnitude", "wanda", "sparsegpt"])
def test_two_four_pattern(imp):
    lm = tiny_llama()
    m = lm.model.eval()
    torchslim.prune_(m, UnstructuredConfig(pattern="2:4", importance=imp, n_samples=4), calibration=lm.task)
    for layer in _sparse_layers(m).values():
        assert layer.pattern == "2:4"
        assert (layer.mask.reshape(layer.out_features, -1, 4).sum(-1) == 2).all()


def test_global_scope_hits_total_with_uneven_layers():
    m = build_tiny_llama().eval()
    torchslim.prune_(m, UnstructuredConfig(sparsity=0.7, scope="global"))
    layers = _sparse_layers(m).values()
    total = sum(la.mask.numel() for la in layers)
    pruned = sum((~la.mask).sum().item() for la in layers)
    assert pruned == round(0.7 * total)
    assert len({round(la.sparsity, 2) for la in layers}) > 1


def test_artifact_shrinks_and_reloads(tmp_path):
    dense, m = build_tiny_llama().eval(), build_tiny_llama().eval()
    torchslim.prune_(m, UnstructuredConfig(sparsity=0.75))
    torchslim.save(dense, tmp_path / "dense")
    torchslim.save(m, tmp_path / "sparse")
    size = lambda p: (p / "model.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "sparse") < 0.75 * size(tmp_path / "dense")
    loaded = torchslim.load(tmp_path / "sparse")
    assert torch.allclose(loaded(input_ids=IDS).logits, m(input_ids=IDS).logits, atol=1e-5)
    assert isinstance(loaded.model.layers[0].mlp.up_proj, SparseLinear)


def test_calibrated_importance_without_data_is_a_clear_error():
    with pytest.raises(ConfigError, match="calibration"):
        torchslim.prune_(build_tiny_llama(), UnstructuredConfig(importance="wanda"))
    with pytest.raises(ConfigError, match="schedule"):
        UnstructuredConfig(importance="movement")
    with pytest.raises(ConfigError, match="layer"):
        UnstructuredConfig(importance="sparsegpt", scope="global")


def test_a_cnn_says_its_convolutions_stay_dense_and_names_channel_pruning(caplog):
    from torchslim.zoo.digits_cnn import build_digits_cnn

    model = build_digits_cnn().eval()
    n_convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    with caplog.at_level("WARNING", logger="torchslim"):
        torchslim.prune_(model, UnstructuredConfig(sparsity=0.5))
    assert f"{n_convs} Conv2d layer(s) left dense" in caplog.text and "targets=['channels']" in caplog.text

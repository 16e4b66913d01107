"""Structured pruning of transformer blocks: GQA heads, MLP neurons, depth; reload and generate."""
import pytest
import torch
from transformers import AutoModelForCausalLM

import torchslim
from torchslim.core.errors import ConfigError
from torchslim.pruning import StructuredConfig
from torchslim.pruning.transformer import BlockInfo, head_plan
from torchslim.zoo.tiny import build_tiny_bert, build_tiny_llama, tiny_llama

IDS = torch.randint(1, 200, (2, 12), generator=torch.Generator().manual_seed(0))


def _params(m):
    return sum(p.numel() for p in m.parameters())


def test_head_plan_respects_gqa_groups():
    info = BlockInfo("b", heads=9, kv_heads=3, head_dim=64, neurons=1536)
    assert head_plan(info, 0.25, 1) == (3, 2)      # 6 heads: 2 query heads in each of the 3 groups
    assert head_plan(info, 0.5, 1) == (2, 2)       # 4 heads (nearest to 4.5 that GQA allows)
    assert head_plan(info, 0.0, 1) == (3, 3)


def test_pruned_llama_equals_masked_dense_reference():
    """Removing neurons equals zeroing their down_proj columns in the original (exact)."""
    m = build_tiny_llama(num_attention_heads=4, num_key_value_heads=2).eval()
    ref = build_tiny_llama(num_attention_heads=4, num_key_value_heads=2).eval()
    torchslim.prune_(m, StructuredConfig(targets=("neurons",), ratio=0.5))
    with torch.no_grad():
        for blk, rblk in zip(m.model.layers, ref.model.layers):
            kept_rows = blk.mlp.up_proj.weight
            # which original neurons survived: match rows of up_proj
            rows = rblk.mlp.up_proj.weight
            keep = torch.tensor([any(torch.equal(r, k) for k in kept_rows) for r in rows])
            assert keep.sum().item() == kept_rows.shape[0] == 64
            rblk.mlp.down_proj.weight[:, ~keep] = 0
        assert torch.allclose(m(input_ids=IDS).logits, ref(input_ids=IDS).logits, atol=1e-5)


@pytest.mark.parametrize("heads,kv,kv_keep,q_per", [(4, 2, 2, 1), (6, 2, 1, 3)])
def test_gqa_heads_masked_reference_and_attributes(heads, kv, kv_keep, q_per):
    """Pruned query heads keep their own key/value head; outputs equal zeroing the pruned heads'
    o_proj columns in the original (with (6, 2) a whole key/value group goes)."""
    d = heads * 16
    cfg = dict(num_attention_heads=heads, num_key_value_heads=kv, head_dim=16, hidden_size=d)
    m, ref = build_tiny_llama(**cfg).eval(), build_tiny_llama(**cfg).eval()
    torchslim.prune_(m, StructuredConfig(targets=("heads",), ratio=0.5))
    attn, hd, per = m.model.layers[0].self_attn, 16, heads // kv
    assert attn.q_proj.out_features == kv_keep * q_per * hd and attn.k_proj.out_features == kv_keep * hd
    assert attn.num_key_value_groups == q_per
    with torch.no_grad():
        for blk, rblk in zip(m.model.layers, ref.model.layers):
            q_rows = blk.self_attn.q_proj.weight.reshape(-1, hd, d)
            r_rows = rblk.self_attn.q_proj.weight.reshape(-1, hd, d)
            kept = [h for h in range(heads) if any(torch.equal(r_rows[h], q) for q in q_rows)]
            k_rows = blk.self_attn.k_proj.weight.reshape(-1, hd, d)
            rk = rblk.self_attn.k_proj.weight.reshape(-1, hd, d)
            kept_kv = [g for g in range(kv) if any(torch.equal(rk[g], k) for k in k_rows)]
            assert sorted({h // per for h in kept}) == kept_kv           # queries stay with their kv head
            for h in set(range(heads)) - set(kept):
                rblk.self_attn.o_proj.weight[:, h * hd:(h + 1) * hd] = 0
        assert torch.allclose(m(input_ids=IDS).logits, ref(input_ids=IDS).logits, atol=1e-5)


def test_uniform_llama_pruning_reloads_with_torchslim_and_from_pretrained(tmp_path):
    m = build_tiny_llama().eval()
    before = _params(m)
    torchslim.prune_(m, StructuredConfig(targets=("heads", "neurons"), ratio=0.5))
    assert _params(m) < 0.8 * before
    assert m.config.intermediate_size == 64 and m.config.head_dim == 16
    torchslim.save(m, tmp_path / "a")
    expected = m(input_ids=IDS).logits
    for loaded in (torchslim.load(tmp_path / "a"), AutoModelForCausalLM.from_pretrained(tmp_path / "a")):
        assert torch.allclose(loaded(input_ids=IDS).logits, expected, atol=1e-5)
    gen = torchslim.load(tmp_path / "a").generate(IDS[:1], max_new_tokens=6, do_sample=False)
    assert gen.tolist() == m.generate(IDS[:1], max_new_tokens=6, do_sample=False).tolist()


def test_global_scope_gives_per_layer_sizes_that_reload(tmp_path):
    lm = tiny_llama(num_hidden_layers=3)
    m = lm.model.eval()
    torchslim.prune_(m, StructuredConfig(targets=("heads", "neurons"), ratio=0.4, importance="wanda",
                                         scope="global", n_samples=4), calibration=lm.task)
    sizes = [s["intermediate_size"] for s in m.config.torchslim_layer_sizes]
    assert len(set(sizes)) > 1 and sum(sizes) == pytest.approx(3 * 128 * 0.6, abs=3)
    torchslim.save(m, tmp_path / "g")
    loaded = torchslim.load(tmp_path / "g")
    assert [blk.mlp.down_proj.in_features for blk in loaded.model.layers] == sizes
    assert torch.allclose(loaded(input_ids=IDS).logits, m(input_ids=IDS).logits, atol=1e-5)
    out = loaded.generate(IDS[:1], max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 17)


def test_depth_pruning_drops_low_influence_blocks_and_renumbers(tmp_path):
    lm = tiny_llama(num_hidden_layers=4)
    m = lm.model.eval()
    torchslim.prune_(m, StructuredConfig(targets=("layers",), ratio=0.5, n_samples=4), calibration=lm.task)
    assert m.config.num_hidden_layers == 2 and len(m.model.layers) == 2
    assert [blk.self_attn.layer_idx for blk in m.model.layers] == [0, 1]
    torchslim.save(m, tmp_path / "d")
    loaded = torchslim.load(tmp_path / "d")
    assert torch.allclose(loaded(input_ids=IDS).logits, m(input_ids=IDS).logits, atol=1e-5)
    assert loaded.generate(IDS[:1], max_new_tokens=4, do_sample=False).shape == (1, 16)


def test_depth_pruning_needs_calibration():
    with pytest.raises(ConfigError, match="calibration"):
        torchslim.prune_(build_tiny_llama(), StructuredConfig(targets=("layers",), ratio=0.5))


def test_bert_heads_and_neurons_reload_without_pooler(tmp_path):
    b = build_tiny_bert().eval()
    torchslim.prune_(b, StructuredConfig(targets=("heads", "neurons"), ratio=0.5))
    layer = b.encoder.layer[0]
    assert layer.attention.self.num_attention_heads == 2 and layer.intermediate.dense.out_features == 64
    expected = b(input_ids=IDS).last_hidden_state
    torchslim.save(b, tmp_path / "b")
    loaded = torchslim.load(tmp_path / "b")
    assert loaded.pooler is None
    assert torch.allclose(loaded(input_ids=IDS).last_hidden_state, expected, atol=1e-5)


def test_structured_config_errors():
    with pytest.raises(ConfigError, match="one of"):
        StructuredConfig(importance="bogus")
    with pytest.raises(ConfigError, match="not a structured importance"):
        StructuredConfig(importance="sparsegpt")
    with pytest.raises(ConfigError, match="channels"):
        StructuredConfig(targets=("channels", "heads"))


def test_min_keep_larger_than_the_layer_is_an_error():
    import torchslim
    from torchslim.core.errors import ConfigError
    from torchslim.pruning import StructuredConfig

    for targets in (("neurons",), ("heads",)):
        loaded = torchslim.load_model("tiny-llama")
        with pytest.raises(ConfigError, match="min_keep \\(1000\\) is more than"):
            torchslim.prune_(loaded.model, StructuredConfig(targets=targets, ratio=0.5, min_keep=1000))


def test_a_head_ratio_that_rounds_to_nothing_warns(caplog):
    loaded = torchslim.load_model("tiny-llama")            # 4 heads in 2 groups: 25% keeps all 4
    with caplog.at_level("WARNING", logger="torchslim"):
        torchslim.prune_(loaded.model, StructuredConfig(targets=("heads",), ratio=0.25))
    assert "keeps every head" in caplog.text and caplog.records[0].levelname == "WARNING"


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_head_pruned_artifacts_reload_and_from_pretrained_loads_or_refuses_clearly(tmp_path, family):
    from torchslim.zoo.families import build_family
    from support_matrix import _from_pretrained

    fam = build_family(family)
    torchslim.prune_(fam.model, StructuredConfig(targets=("heads",), ratio=0.5))
    ids = {"input_ids": torch.arange(12).reshape(1, 12)}
    out = fam.output(ids)
    torchslim.save(fam.model, tmp_path / "h")
    again = torchslim.load(tmp_path / "h")
    assert torch.allclose(again(**ids).logits, out, atol=1e-5)
    assert _from_pretrained(fam, tmp_path / "h", ids, out)


@pytest.mark.parametrize("family,loads", [("llama", False), ("gemma2", False), ("qwen2", True)])
def test_six_of_eight_heads_save_a_config_transformers_validates_or_say_why_not(tmp_path, family, loads, caplog):
    """Llama and Gemma2 configs require hidden_size % heads == 0 (6 heads of 8 in width 64 fail it): the config
    keeps its valid head fields, the prune says why in one line, and torchslim.load rebuilds the shapes. Qwen2 reads
    an explicit head_dim: the counts and head_dim are written and from_pretrained gives the same outputs."""
    import json

    import transformers

    from torchslim.zoo.families import _specs

    cfg_cls, model_cls, kw, _ = _specs()[family]
    kw = {**kw, "num_attention_heads": 8, "num_key_value_heads": 8, "head_dim": 8}
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kw)).eval()
    with caplog.at_level("WARNING", logger="torchslim"):
        torchslim.prune_(model, StructuredConfig(targets=("heads",), ratio=0.25))
    assert model.model.layers[0].self_attn.q_proj.out_features == 48
    with torch.no_grad():
        out = model(input_ids=IDS).logits
    torchslim.save(model, tmp_path / "h")
    assert torch.allclose(torchslim.load(tmp_path / "h")(input_ids=IDS).logits, out, atol=1e-5)
    written = json.loads((tmp_path / "h" / "config.json").read_text())
    if loads:
        assert (written["num_attention_heads"], written["num_key_value_heads"], written["head_dim"]) == (6, 6, 8)
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "h", local_files_only=True).eval()
        assert torch.allclose(hf(input_ids=IDS).logits, out, atol=1e-5)
    else:
        assert "cannot express 6 heads" in caplog.text and "not a multiple" in caplog.text
        with pytest.raises(ValueError, match="torchslim.load"):
            AutoModelForCausalLM.from_pretrained(tmp_path / "h", local_files_only=True)

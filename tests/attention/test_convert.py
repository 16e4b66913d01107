"""Model flow: converting a model's attention, exactness where the approximation covers everything, artifacts."""
import copy
import logging

import pytest
import torch

import torchslim
from torchslim import AttentionConfig
from torchslim.attention import attention_modules, converted
from torchslim.attention.module import IMPLEMENTATION
from torchslim.core.errors import ConfigError
from torchslim.core.resize import remove_added
from torchslim.core.state import state_of

from _attention_helpers import IDS, MASK, hidden

VALID = MASK.bool()


@pytest.mark.parametrize("cfg", [AttentionConfig(window=64), AttentionConfig(method="block_sparse", window=64),
                                 AttentionConfig(window=30, n_global=3)])
def test_window_covering_the_sequence_equals_the_original_model(model, cfg):
    ref = hidden(model)
    torchslim.convert_attention_(model, cfg)
    assert len(converted(model)) == len(attention_modules(model)) == 2
    out = hidden(model)
    assert (out - ref)[VALID].abs().max() < 1e-4


def test_short_window_changes_the_output_and_runs_the_added_module(model):
    ref = hidden(model)
    torchslim.convert_attention_(model, AttentionConfig(window=4))
    name, attn = next(iter(attention_modules(model).items()))
    assert attn.config._attn_implementation == IMPLEMENTATION
    assert model.config._attn_implementation != IMPLEMENTATION      # the model's own config is untouched
    assert (hidden(model) - ref)[VALID].abs().max() > 1e-3
    remove_added(model, f"{name}.efficient_attention")               # detaching restores the shared config
    assert attn.config is model.config


def test_linformer_identity_projection_equals_the_encoder(tiny_bert):
    m = copy.deepcopy(tiny_bert.model).eval()
    ref = hidden(m)
    torchslim.convert_attention_(m, AttentionConfig(method="linformer", proj_len=32, max_length=32))
    assert (hidden(m) - ref)[VALID].abs().max() < 1e-4


def test_linformer_refuses_a_decoder(tiny_llama):
    m = copy.deepcopy(tiny_llama.model)
    with pytest.raises(ConfigError, match="cannot be causal"):
        torchslim.convert_attention_(m, AttentionConfig(method="linformer"))


def test_performer_approximates_attention(model):
    ref = hidden(model)
    torchslim.convert_attention_(model, AttentionConfig(method="performer", features=256))
    err = ((hidden(model) - ref)[VALID].abs().mean() / ref[VALID].abs().mean()).item()
    assert 0 < err < 0.2
    feats = [m.random_features for m in converted(model).values()]
    assert not torch.equal(feats[0], feats[1])                        # one draw per layer


@pytest.mark.parametrize("cfg", [AttentionConfig(window=4, n_global=1), AttentionConfig(method="performer", features=32),
                                 AttentionConfig(method="block_sparse", window=8)])
def test_artifact_round_trip_gives_identical_outputs(model, cfg, tmp_path):
    torchslim.convert_attention_(model, cfg)
    out = hidden(model)
    torchslim.save(model, tmp_path / "a")
    back = torchslim.load(tmp_path / "a")
    assert len(converted(back)) == 2
    assert torch.equal(hidden(back), out)


def test_linformer_artifact_round_trip(tiny_bert, tmp_path):
    m = copy.deepcopy(tiny_bert.model).eval()
    torchslim.convert_attention_(m, AttentionConfig(method="linformer", proj_len=8, max_length=32))
    with torch.no_grad():
        for eff in converted(m).values():
            eff.proj_k.add_(0.01 * torch.randn_like(eff.proj_k))      # as if trained
    out = hidden(m)
    torchslim.save(m, tmp_path / "l")
    assert torch.equal(hidden(torchslim.load(tmp_path / "l")), out)


def test_greedy_generation_with_cache_matches_full_attention(tiny_llama):
    m = copy.deepcopy(tiny_llama.model).eval()
    ids = IDS[:1, :12]
    ref = m.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    torchslim.convert_attention_(m, AttentionConfig(window=64))
    assert torch.equal(m.generate(input_ids=ids, max_new_tokens=8, do_sample=False), ref)


def test_decode_with_cache_equals_recomputation(tiny_llama):
    """A short window: the cached decode step sees the same keys as a full recomputation of the sequence."""
    m = copy.deepcopy(tiny_llama.model).eval()
    torchslim.convert_attention_(m, AttentionConfig(window=5, n_global=2))
    ids = IDS[:1, :20]
    with torch.no_grad():
        full = m(input_ids=ids).logits[:, -1]
        past = m(input_ids=ids[:, :-1], use_cache=True).past_key_values
        step = m(input_ids=ids[:, -1:], past_key_values=past, use_cache=True).logits[:, -1]
    assert (full - step).abs().max() < 1e-4


def test_selector_picks_layers_and_the_rest_keep_full_attention(model, caplog):
    first = next(iter(attention_modules(model)))
    with caplog.at_level(logging.WARNING, logger="torchslim.attention"):
        torchslim.convert_attention_(model, AttentionConfig(window=4, selector=torchslim.Selector(include=(first,))))
    assert list(converted(model)) == [first]
    assert "1 of 2 attention modules keep full attention" in caplog.text


def test_selector_matching_nothing_is_an_error(model):
    with pytest.raises(ConfigError, match="matched none"):
        torchslim.convert_attention_(model, AttentionConfig(selector=torchslim.Selector(include=("nothing",))))


def test_history_counts_the_converted_modules(model):
    torchslim.convert_attention_(model, AttentionConfig(window=8))
    entry = state_of(model).history[-1]
    assert entry.name == "AttentionConfig" and entry.metrics["attention_converted"] == 2
    assert entry.touched["by_type"] == {"EfficientAttention": 2}


def test_converting_again_replaces_the_earlier_module(model):
    torchslim.convert_attention_(model, AttentionConfig(window=4))
    torchslim.convert_attention_(model, AttentionConfig(method="performer", features=16))
    assert {e.method for e in converted(model).values()} == {"performer"}
    assert len(state_of(model).added) == 2


def test_config_validation():
    with pytest.raises(ConfigError):
        AttentionConfig(method="linformer", proj_len=600, max_length=512)
    with pytest.raises(ConfigError):
        AttentionConfig(window=0)
    assert AttentionConfig.from_dict(AttentionConfig(window=16, n_global=1).to_dict()) == \
        AttentionConfig(window=16, n_global=1)


def test_recipe_stage_parses_and_names_the_family():
    from torchslim.recipes import Recipe

    r = Recipe.from_dict({"stages": [{"attention": {"_type": "AttentionConfig", "window": 16}}]})
    assert r.stages[0].config == AttentionConfig(window=16)
    with pytest.raises(ConfigError, match="not for a 'attention' stage"):
        Recipe.from_dict({"stages": [{"attention": {"_type": "LowRankConfig"}}]})

"""Prompt tuning and prefix tuning on the tiny Llama (grouped-query attention) and the tiny BERT encoder:
training, what changes, shapes, artifacts, switching off, merging refused, and agreement with Hugging Face
peft (trainable counts, outputs with the same weights, generation)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import torchslim
from torchslim.core.errors import ConfigError
from torchslim.data import text as text_data
from torchslim.peft import (
    PrefixTuningConfig,
    PromptTuningConfig,
    branches,
    delete_adapter,
    merge_,
    set_adapter,
)
from torchslim.tasks.causal_lm import CausalLMTask
from torchslim.tasks.embedding import SentenceEmbeddingTask
from torchslim.train.hooks import TrainHook
from torchslim.zoo.tiny import build_tiny_bert

peft = pytest.importorskip("peft")

STEPS = 20
CASES = {   # name: (zoo model, config, learning rate)
    "llama-prompt": ("tiny-llama", lambda: PromptTuningConfig(n_virtual=8), 3e-2),
    "llama-prefix": ("tiny-llama", lambda: PrefixTuningConfig(n_virtual=8), 3e-2),
    "bert-prompt": ("tiny-bert", lambda: PromptTuningConfig(n_virtual=8), 5e-2),
    "bert-prefix": ("tiny-bert", lambda: PrefixTuningConfig(n_virtual=8), 5e-2),
}


def small(zoo: str) -> SimpleNamespace:
    """A tiny zoo model with a task sized for fast tests (32-token windows; 48 sentences of at most 32 tokens)."""
    lm = torchslim.load_model(zoo)
    if zoo == "tiny-llama":
        task = CausalLMTask(lm.tokenizer, seq_len=32, max_eval_windows=4)
    else:
        pool = text_data.sentences("calibration")
        task = SentenceEmbeddingTask(lm.tokenizer, lambda: build_tiny_bert(0), max_length=32,
                                     calibration_sentences=pool[:48], eval_sentences=pool[48:60])
    return SimpleNamespace(model=lm.model, task=task, tokenizer=lm.tokenizer)


def outputs(lm: SimpleNamespace, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = lm.task.forward(lm.model, inputs)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


class Watch(TrainHook):
    """Held-out loss and the adapter's parameters as training starts (the adapter is in place by then)."""

    def __init__(self, batch: dict) -> None:
        self.batch, self.loss, self.params = batch, None, {}

    def on_start(self, trainer) -> None:
        with torch.no_grad():
            self.loss = float(trainer.task.loss(trainer.model, self.batch))
        self.params = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module", params=sorted(CASES))
def trained(request) -> SimpleNamespace:
    zoo, make, lr = CASES[request.param]
    torch.manual_seed(0)
    lm = small(zoo)
    inputs = lm.task.example_inputs(2, 24)
    base_out = outputs(lm, inputs)
    base_state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    held_out = next(lm.task.train_batches(8, seed=1234))
    watch = Watch(held_out)
    torchslim.finetune_(lm.model, make(), task=lm.task, hooks=(watch,),
                        train=torchslim.TrainConfig(steps=STEPS, batch_size=4, lr=lr, schedule="constant",
                                                    eval_at_end=False, progress=False))
    with torch.no_grad():
        after = float(lm.task.loss(lm.model, held_out))
    return SimpleNamespace(lm=lm, name=request.param, inputs=inputs, base_out=base_out, base_state=base_state,
                           before=watch.loss, after=after, start_params=watch.params, out=outputs(lm, inputs))


def test_loss_goes_down(trained):
    # The encoder distils towards its own base (loss 0 without the adapter; measured 20 steps: prompt 0.0055 ->
    # 0.0044, prefix 0.0053 -> 0.0016: with the virtual tokens in front, the text's absolute positions move on by
    # n_virtual, which no prompt undoes). The random Llama's loss is ~ln(257) (measured: -0.11 and -0.14).
    target = trained.before * 0.9 if trained.name.startswith("bert") else trained.before - 0.05
    assert trained.after < target, (trained.before, trained.after)


def test_only_the_adapter_changes(trained):
    state = trained.lm.model.state_dict()
    (name, branch), = branches(trained.lm.model)
    assert name == f"torchslim_{branch.method}_default"
    for k, v in trained.base_state.items():
        assert torch.equal(state[k], v), k
    own = {f"{name}.{n}" for n, _ in branch.named_parameters()}
    assert set(trained.start_params) == own                    # only the adapter was trainable
    assert all(not torch.equal(state[k], trained.start_params[k]) for k in own)
    assert set(state) == set(trained.base_state) | own


def test_the_task_sees_the_shapes_it_asked_for(trained):
    lm = trained.lm
    assert trained.out.shape == trained.base_out.shape
    batch = next(lm.task.train_batches(2, seed=5))
    with torch.no_grad():
        out = lm.task.train_forward(lm.model, batch)
    seen = out.logits if hasattr(out, "logits") else out.last_hidden_state
    assert seen.shape[:2] == batch["input_ids"].shape
    metrics = lm.task.evaluate(lm.model)                        # the task's own metric runs unchanged
    assert all(v == v and abs(v) < float("inf") for v in metrics.values())
    assert not torch.allclose(trained.out, trained.base_out, atol=1e-4)   # the adapter does act


def test_artifact_round_trip(trained, tmp_path):
    torchslim.save(trained.lm.model, tmp_path / "a")
    loaded = SimpleNamespace(model=torchslim.load(tmp_path / "a"), task=trained.lm.task)
    assert torch.equal(outputs(loaded, trained.inputs), trained.out)
    (_, branch), = branches(loaded.model)
    set_adapter(loaded.model, None)
    assert torch.equal(outputs(loaded, trained.inputs), trained.base_out)


def test_switching_the_adapter_off_gives_the_base_exactly(trained):
    model = trained.lm.model
    try:
        assert set_adapter(model, None) == []
        assert torch.equal(outputs(trained.lm, trained.inputs), trained.base_out)
    finally:
        set_adapter(model, "default")
    assert torch.equal(outputs(trained.lm, trained.inputs), trained.out)


def test_merge_is_refused(trained):
    with pytest.raises(ConfigError, match="cannot be merged"):
        merge_(trained.lm.model)
    assert torch.equal(outputs(trained.lm, trained.inputs), trained.out)


# -- agreement with Hugging Face peft --------------------------------------------------------------------
PEFT = {   # name: (zoo model, our config, peft config)
    "llama-prompt": ("tiny-llama", PromptTuningConfig(n_virtual=5),
                     lambda t: peft.PromptTuningConfig(task_type=t, num_virtual_tokens=5)),
    "llama-prefix": ("tiny-llama", PrefixTuningConfig(n_virtual=5),
                     lambda t: peft.PrefixTuningConfig(task_type=t, num_virtual_tokens=5)),
    "llama-prefix-mlp": ("tiny-llama", PrefixTuningConfig(n_virtual=5, projection=16),
                         lambda t: peft.PrefixTuningConfig(task_type=t, num_virtual_tokens=5, prefix_projection=True,
                                                           encoder_hidden_size=16)),
    "bert-prompt": ("tiny-bert", PromptTuningConfig(n_virtual=5),
                    lambda t: peft.PromptTuningConfig(task_type=t, num_virtual_tokens=5)),
    "bert-prefix": ("tiny-bert", PrefixTuningConfig(n_virtual=5),
                    lambda t: peft.PrefixTuningConfig(task_type=t, num_virtual_tokens=5)),
}


def with_peft(name: str) -> tuple[SimpleNamespace, dict, object]:
    """Our adapter and peft's on two copies of one model, peft's given our (random) weights."""
    zoo, config, make = PEFT[name]
    lm = small(zoo)
    theirs = peft.get_peft_model(torchslim.load_model(zoo).model,
                                 make("CAUSAL_LM" if zoo == "tiny-llama" else "FEATURE_EXTRACTION")).eval()
    torch.manual_seed(0)
    prepared = config.prepare(lm.model, torchslim.ApplyContext())
    (_, branch), = branches(lm.model)
    encoder = theirs.prompt_encoder["default"]
    with torch.no_grad():
        encoder.embedding.weight.copy_(branch.embedding if branch.method == "prompt" else branch.prefix)
        if getattr(branch, "mlp", None) is not None:
            encoder.transform.load_state_dict(branch.mlp.state_dict())
    return lm, prepared.records[0], theirs


@pytest.mark.parametrize("name", sorted(PEFT))
def test_trainable_parameters_and_outputs_equal_peft(name):
    lm, record, theirs = with_peft(name)
    assert record["trainable_params"] == theirs.get_nb_trainable_parameters()[0]
    inputs = lm.task.example_inputs(2, 12)
    ours = outputs(lm, inputs)
    with torch.no_grad():
        out = theirs(**inputs)
    ref = out.logits if hasattr(out, "logits") else out.last_hidden_state
    torch.testing.assert_close(ours, ref[:, ref.shape[1] - ours.shape[1]:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama-prompt", "llama-prefix"])
def test_generation_with_a_cache_matches_recomputation_and_peft(name):
    lm, _, theirs = with_peft(name)
    ids = lm.task.example_inputs(2, 6)["input_ids"]
    kw = {"attention_mask": torch.ones_like(ids), "max_new_tokens": 6, "do_sample": False, "pad_token_id": 0,
          "return_dict_in_generate": True, "output_logits": True}
    cached = lm.model.generate(ids, **kw)
    assert cached.sequences.shape == (2, 12) and torch.equal(cached.sequences[:, :6], ids)
    for other in (lm.model.generate(ids, use_cache=False, **kw), theirs.generate(input_ids=ids, **kw)):
        assert torch.equal(cached.sequences, other.sequences)
        torch.testing.assert_close(torch.stack(cached.logits), torch.stack(other.logits), rtol=1e-5, atol=1e-5)
    # a left-padded row: positions follow the mask as for the base model (peft drops position ids for prompt
    # tuning, so its positions count the pads there; only recomputation is the reference here)
    mask = kw["attention_mask"].clone()
    mask[1, :2] = 0
    padded = {**kw, "attention_mask": mask}
    cached, again = lm.model.generate(ids, **padded), lm.model.generate(ids, use_cache=False, **padded)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(again.logits), rtol=1e-5, atol=1e-5)
    stats = lm.task.decode(lm.model, new_tokens=3)
    assert stats.new_tokens == 3


# -- refusals, switching ------------------------------------------------------------------------------
def test_bad_configs_are_refused_in_one_line():
    for make, match in [(lambda: PromptTuningConfig(merge=True), "cannot be merged"),
                        (lambda: PromptTuningConfig(init="text"), "init must be one of"),
                        (lambda: PrefixTuningConfig(n_virtual=0), "n_virtual"),
                        (lambda: PrefixTuningConfig(projection=0), "projection"),
                        (lambda: PromptTuningConfig(selector=torchslim.Selector(include=("re:.*",))), "selector")]:
        with pytest.raises(ConfigError, match=match) as e:
            make()
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="needs a Hugging Face model"):
        PromptTuningConfig().prepare(torch.nn.Linear(4, 4), torchslim.ApplyContext())


def test_models_prefix_tuning_cannot_serve_are_refused():
    from transformers import T5Config, T5ForConditionalGeneration

    from torchslim.peft.prompt.config import attention_geometry

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=16, num_layers=1, num_heads=2))
    with pytest.raises(ConfigError, match="not encoder-decoder"):
        PrefixTuningConfig().prepare(t5, torchslim.ApplyContext())
    mixed = SimpleNamespace(layer_types=["full_attention", "sliding_attention"], num_hidden_layers=2,
                            num_attention_heads=2, hidden_size=8)
    with pytest.raises(ConfigError, match="mixes attention kinds"):
        attention_geometry(mixed)


def test_adapters_switch_and_one_virtual_adapter_acts_at_a_time():
    lm = small("tiny-llama")
    inputs = lm.task.example_inputs(2, 10)
    base = outputs(lm, inputs)
    ctx = torchslim.ApplyContext()
    PromptTuningConfig(n_virtual=4, adapter="a", init="vocab").prepare(lm.model, ctx)
    a = outputs(lm, inputs)
    with pytest.raises(ConfigError, match="active prompt adapter 'a'"):
        PrefixTuningConfig(n_virtual=4, adapter="b").prepare(lm.model, ctx)
    set_adapter(lm.model, None)
    PrefixTuningConfig(n_virtual=4, adapter="b").prepare(lm.model, ctx)
    b = outputs(lm, inputs)
    assert not torch.allclose(a, b) and not torch.allclose(a, base)
    set_adapter(lm.model, "a")
    assert torch.equal(outputs(lm, inputs), a)
    set_adapter(lm.model, ["a", "b"])
    with pytest.raises(ConfigError, match="activate one at a time"):
        outputs(lm, inputs)
    set_adapter(lm.model, "b")
    assert torch.equal(outputs(lm, inputs), b)
    assert delete_adapter(lm.model, "b") == 1 and delete_adapter(lm.model, "a") == 1
    assert torch.equal(outputs(lm, inputs), base)            # their hooks are gone with them
    assert not lm.model._forward_hooks and not lm.model._forward_pre_hooks


@pytest.mark.parametrize("config", [PromptTuningConfig(n_virtual=3), PrefixTuningConfig(n_virtual=3)], ids=["prompt", "prefix"])
def test_labels_and_positions_are_extended(config):
    lm = small("tiny-llama")
    inputs = lm.task.example_inputs(2, 10)
    ids = inputs["input_ids"]
    base = lm.model(**inputs, labels=ids).loss
    config.prepare(lm.model, torchslim.ApplyContext())
    with torch.no_grad():
        given = lm.model(**inputs, labels=ids, position_ids=torch.arange(10).expand(2, -1))
        default = lm.model(**inputs, labels=ids)
    assert given.logits.shape == (2, 10, 257)
    torch.testing.assert_close(given.logits, default.logits)   # explicit positions shift as the default ones
    assert torch.isfinite(default.loss) and not torch.equal(default.loss, base)
    with pytest.raises(ConfigError, match="return_dict=False"):
        lm.model(**inputs, return_dict=False)


@pytest.mark.parametrize("config", [PromptTuningConfig(n_virtual=3), PrefixTuningConfig(n_virtual=3)], ids=["prompt", "prefix"])
def test_encoder_token_types_and_a_missing_mask(config):
    lm = small("tiny-bert")
    inputs = lm.task.example_inputs(2, 10)
    config.prepare(lm.model, torchslim.ApplyContext())
    full = outputs(lm, {**inputs, "attention_mask": torch.ones_like(inputs["input_ids"])})
    with torch.no_grad():
        types = lm.model(**inputs, token_type_ids=torch.zeros_like(inputs["input_ids"])).last_hidden_state
        unmasked = lm.model(input_ids=inputs["input_ids"]).last_hidden_state
    torch.testing.assert_close(types, outputs(lm, inputs))
    torch.testing.assert_close(unmasked, full)                 # the virtual positions are attended without a mask

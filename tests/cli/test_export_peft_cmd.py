"""``torchslim export peft``: an artifact's adapter as a peft folder that peft loads with the same outputs; bad
input is one ``error:`` line, exit 2."""
from __future__ import annotations

import peft
import pytest
import torch

import torchslim
from torchslim.cli.main import main
from torchslim.peft import IA3Config, LoraConfig, PrefixTuningConfig, branches
from torchslim.zoo.tiny import build_tiny_llama

IDS = torch.randint(1, 250, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def adapted_artifact(tmp_path_factory):
    model = build_tiny_llama(0).eval()
    LoraConfig(r=4, alpha=8, adapter="chat").add_branches(model)
    with torch.no_grad():
        for _, b in branches(model):
            b.B.normal_(0, 0.2, generator=torch.Generator().manual_seed(2))
    return torchslim.save(model, tmp_path_factory.mktemp("art") / "lora")


def test_export_peft_loads_in_peft_with_the_artifacts_outputs(adapted_artifact, tmp_path, capsys) -> None:
    out = tmp_path / "peft"
    with pytest.raises(SystemExit) as exit_:
        main(["export", "peft", str(adapted_artifact), "-o", str(out)])
    assert exit_.value.code == 0, capsys.readouterr().err
    assert "peft LORA adapter 'chat': 14 layers" in " ".join(capsys.readouterr().out.split())
    with torch.no_grad():
        want = torchslim.load(adapted_artifact)(input_ids=IDS).logits
        got = peft.PeftModel.from_pretrained(build_tiny_llama(0).eval(), out)(input_ids=IDS).logits
    assert (got - want).abs().max() < 1e-5


@pytest.mark.parametrize("config, says", [(IA3Config(adapter="tone"), "peft IA3 adapter 'tone': 6 layers"),
                                          (PrefixTuningConfig(n_virtual=4, projection=8, adapter="tone"),
                                           "peft PREFIX_TUNING adapter 'tone': virtual tokens")])
def test_export_peft_writes_ia3_and_prefix_adapters(tmp_path, capsys, config, says) -> None:
    model = build_tiny_llama(0).eval()
    config.add_branches(model)
    with torch.no_grad():
        for _, b in branches(model):
            for p in b.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(2)))
    art, out = torchslim.save(model, tmp_path / "art"), tmp_path / "peft"
    with pytest.raises(SystemExit) as exit_:
        main(["export", "peft", str(art), "-o", str(out)])
    assert exit_.value.code == 0, capsys.readouterr().err
    assert says in " ".join(capsys.readouterr().out.split())
    with torch.no_grad():
        want = torchslim.load(art)(input_ids=IDS).logits
        got = peft.PeftModel.from_pretrained(build_tiny_llama(0).eval(), out)(input_ids=IDS).logits
        base = build_tiny_llama(0)(input_ids=IDS).logits
    assert (got - want).abs().max() < 1e-5 and (got - base).abs().max() > 1e-2


@pytest.mark.parametrize("args, says", [(["--adapter", "nope"], "no adapter 'nope' (it has chat)"),
                                        (["--adapter", "9x"], "an adapter name must be")])
def test_bad_input_is_one_error_line(adapted_artifact, tmp_path, capsys, args, says) -> None:
    out = tmp_path / "peft"
    with pytest.raises(SystemExit) as exit_:
        main(["export", "peft", str(adapted_artifact), "-o", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error:") and says in err[0], err
    assert not out.exists()


def test_an_artifact_without_adapter_or_over_the_source_is_refused(tmp_path, capsys) -> None:
    art = torchslim.save(build_tiny_llama(0), tmp_path / "plain")
    for argv, says in ((["-o", str(tmp_path / "x")], "has no adapter to export"),
                       (["-o", str(art / "inside")], "is the source")):
        with pytest.raises(SystemExit) as exit_:
            main(["export", "peft", str(art), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and says in err[0], err
    assert not (tmp_path / "x").exists()

"""``torchslim config example VERB``: a complete config file for each verb that takes one, in the short form
recipes use (``Config.to_yaml``); redirect it to a file, edit, and pass it with ``--config``."""
from __future__ import annotations

from typing import Callable

import typer

config_app = typer.Typer(help="Config files for the verbs that take one.", no_args_is_help=True)


def _quantize() -> str:
    from torchslim.core.select import Selector
    from torchslim.quantization import GPTQConfig, IntFormat, PerGroup, WeightOnlyConfig

    import yaml

    cfg = GPTQConfig(weight=WeightOnlyConfig(format=IntFormat(4, symmetric=False), granularity=PerGroup(128),
                                             selector=Selector(exclude=("lm_head",))), n_samples=128)
    short = cfg.to_short_dict()
    short["weight"] = {"_type": "WeightOnlyConfig", "format": {"_type": "IntFormat", "bits": 4, "symmetric": False},
                       "granularity": {"_type": "PerGroup", "size": 128}, **short["weight"]}   # the defaults, spelled out
    return ("# int4.yaml: GPTQ int4 weights, groups of 128, asymmetric; the output head left as it is\n"
            "# torchslim quantize MODEL --config int4.yaml --out out/int4\n" + yaml.safe_dump(short, sort_keys=False))


def _prune() -> str:
    from torchslim.core.select import Selector
    from torchslim.pruning import UnstructuredConfig

    cfg = UnstructuredConfig(sparsity=0.5, importance="wanda", selector=Selector(exclude=("lm_head",)))
    return ("# wanda50.yaml: half of every linear layer's weights removed by Wanda (calibrated), the head kept\n"
            "# torchslim prune MODEL --config wanda50.yaml --out out/wanda50\n" + cfg.to_yaml())


def _finetune() -> str:
    from torchslim.train import TrainConfig

    cfg = TrainConfig(steps=200, batch_size=8, lr=1e-4, warmup_steps=20, max_grad_norm=1.0)
    return ("# train.yaml: a TrainConfig (steps, batch, optimizer, schedule, checkpoints)\n"
            "# torchslim finetune MODEL --config train.yaml --out out/tuned\n" + cfg.to_yaml())


def _run() -> str:
    from torchslim.recipes import preset_path

    return ("# recipe.yaml: ordered stages (the shipped int4-gptq recipe); any stage's config is a config file's\n"
            "# torchslim run recipe.yaml --model MODEL --out out/run\n" + preset_path("int4-gptq").read_text())


EXAMPLES: dict[str, Callable[[], str]] = {"quantize": _quantize, "prune": _prune, "finetune": _finetune, "run": _run}


@config_app.command("example")
def example_cmd(verb: str = typer.Argument(..., help="quantize, prune, finetune or run.")) -> None:
    """Print a complete config file for VERB (YAML, the short form recipes use)."""
    from torchslim.core.errors import ConfigError

    if verb not in EXAMPLES:
        raise ConfigError(f"no config example for {verb!r}; verbs that take a config file: {', '.join(EXAMPLES)}")
    typer.echo(EXAMPLES[verb](), nl=False)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")

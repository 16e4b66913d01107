import pytest

from torchslim.core.errors import ConfigError
from torchslim.lowrank import LowRankConfig, Method
from torchslim.pruning import UnstructuredConfig
from torchslim.quantization import PerChannel, PerGroup, WeightOnlyConfig
from torchslim.search import parse_action, parse_actions


def test_short_names_make_the_configs_they_say():
    q = parse_action("int4g64").config
    assert isinstance(q, WeightOnlyConfig) and q.format.bits == 4 and not q.format.symmetric
    assert q.granularity == PerGroup(64)
    q8 = parse_action("int8").config
    assert q8.format.bits == 8 and q8.format.symmetric and q8.granularity == PerChannel()
    p = parse_action("sparse30").config
    assert isinstance(p, UnstructuredConfig) and p.sparsity == pytest.approx(0.3) and p.pattern is None
    assert parse_action("2:4").config.pattern == "2:4"
    r = parse_action("svd25").config
    assert isinstance(r, LowRankConfig) and r.method is Method.SVD and r.ratio == pytest.approx(0.25)


def test_a_config_file_is_an_action(tmp_path):
    WeightOnlyConfig(granularity=PerGroup(32)).save(tmp_path / "mine.yaml")
    a = parse_action(str(tmp_path / "mine.yaml"))
    assert a.name == "mine" and a.config.granularity == PerGroup(32)


@pytest.mark.parametrize("bad", ["int9", "int1", "sparse0", "sparse100", "4:4", "svd", "fp8", ""])
def test_unknown_names_are_one_error_naming_the_choices(bad):
    with pytest.raises(ConfigError, match="int4g128|no actions"):
        parse_actions(bad)


def test_lists_and_duplicates():
    assert [a.name for a in parse_actions("int8, 2:4,svd10")] == ["int8", "2:4", "svd10"]
    with pytest.raises(ConfigError, match="twice"):
        parse_actions("int8,int8")

"""experiments/common.py: flags defined from a configuration class, the configuration built back from them."""

import dataclasses

import pytest
from absl import flags

from experiments import common
from experiments.lib import common as lib_common


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyConfig(lib_common.RunConfig):
    toy_count: int = 3
    toy_rate: float = 0.5
    toy_name: str = "a"
    toy_flag: bool = False
    toy_path: str | None = None
    toy_sizes: tuple[int, ...] = (4, 8)
    seed: int = 7  # a shared name: another experiment may have defined --seed with another default


@dataclasses.dataclass(frozen=True, kw_only=True)
class OtherToyConfig(ToyConfig):
    toy_count: int = 5


HELP = {f"toy_{n}": "toy" for n in ("count", "rate", "name", "flag", "path", "sizes")}
FLAGS = common.define_flags(ToyConfig, HELP)
common.define_flags(OtherToyConfig, HELP)  # every name exists already: kept, not redefined


def parsed(cls, *argv):
    flags.FLAGS(["toy", *argv])
    try:
        return common.config_from_flags(cls)
    finally:
        flags.FLAGS.unparse_flags()


def test_flags_are_the_fields_with_their_defaults():
    assert FLAGS["toy_sizes"].default == ["4", "8"] and FLAGS["toy_path"].default is None
    assert FLAGS["toy_flag"].default is False and FLAGS["toy_rate"].default == 0.5
    # the configuration of each class gets its own defaults, whoever defined the flag
    assert parsed(ToyConfig) == ToyConfig()
    assert parsed(OtherToyConfig) == OtherToyConfig() and parsed(OtherToyConfig).toy_count == 5
    assert parsed(ToyConfig, "--seed=1", "--toy_flag", "--toy_sizes=1,2,3", "--toy_path=/x", "--noprogress") == (
        ToyConfig(seed=1, toy_flag=True, toy_sizes=(1, 2, 3), toy_path="/x", progress=False)
    )
    # a base configuration (a scale preset) under the flags given
    flags.FLAGS(["toy", "--toy_count=9"])
    try:
        cfg = common.config_from_flags(ToyConfig, base=ToyConfig(toy_count=1, toy_name="b"))
    finally:
        flags.FLAGS.unparse_flags()
    assert (cfg.toy_count, cfg.toy_name) == (9, "b")


def test_bad_values_name_the_flag():
    with pytest.raises(lib_common.ConfigError) as err:
        parsed(ToyConfig, "--toy_sizes=1,x")
    assert common.user_message(err.value) == (
        "--toy_sizes=1,x is out of range; accepted: a comma-separated list of integers"
    )
    assert str(err.value).startswith("toy_sizes=1,x is out of range")  # the library's own naming
    with pytest.raises(KeyError, match="no help text for the flag --toy_new"):

        @dataclasses.dataclass(frozen=True)
        class New:
            toy_new: int = 1

        common.define_flags(New)
    with pytest.raises(TypeError, match="--toy_count is a int flag elsewhere, a string"):

        @dataclasses.dataclass(frozen=True)
        class Clash:
            toy_count: str = "x"

        common.define_flags(Clash)


def test_record_writes_tuples_as_the_command_line():
    assert lib_common.record(ToyConfig(), workdir="/w")["toy_sizes"] == ["4", "8"]
    assert lib_common.record(ToyConfig(), workdir="/w")["workdir"] == "/w"


def test_flag_names_of_parameters():
    assert common.flag("workdir") == "--workdir" and common.flag("num_iterations", 5) == "--num_iterations=5"
    assert common.flag("overwrite", True) == "--overwrite" and common.flag("overwrite", False) == "--nooverwrite"
    assert common.user_message(ValueError("plain")) == "plain"

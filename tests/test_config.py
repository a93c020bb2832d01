import pytest

from grp_workbench.harness.config import TrainConfig, build_config, config_from_dict, config_to_dict, parse_overrides
from grp_workbench.harness.errors import HarnessError, WorkbenchError
from tests.conftest import TOY_PRESETS, ToyConfig


def test_preset_then_overrides_in_that_order():
    config = build_config(ToyConfig, TOY_PRESETS, "quick", ["lr=1e-3", "total_steps=7", "deterministic=true"])
    assert config.total_steps == 7 and config.lr == 1e-3 and config.deterministic is True
    assert build_config(ToyConfig, TOY_PRESETS, "quick").total_steps == 40


def test_config_round_trips_through_json_dict():
    config = build_config(ToyConfig, TOY_PRESETS, "paper", ["seed=3", "batch_size=32"])
    assert config_from_dict(ToyConfig, config_to_dict(config)) == config


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(WorkbenchError, match="unknown preset 'fast'.*choose one of paper, quick"):
        build_config(ToyConfig, TOY_PRESETS, "fast")


def test_bad_override_key_suggests_the_right_one():
    with pytest.raises(HarnessError, match="no field 'batchsize'. Did you mean batch_size"):
        build_config(ToyConfig, TOY_PRESETS, "quick", ["batchsize=8"])


@pytest.mark.parametrize("pair, message", [
    ("batch_size=many", "must be an integer"),
    ("batch_size=3.5", "must be an integer"),
    ("deterministic=maybe", "must be true or false"),
    ("lr", "must look like key=value"),
    ("total_steps=0", "must be a positive integer"),
    ("device=tpu", "must be one of"),
])
def test_bad_override_values_name_the_key_and_the_fix(pair, message):
    with pytest.raises(HarnessError, match=message):
        build_config(ToyConfig, TOY_PRESETS, "quick", [pair])


def test_saved_config_for_another_method_is_rejected():
    with pytest.raises(HarnessError, match="saved config"):
        config_from_dict(TrainConfig, {**config_to_dict(ToyConfig()), "seed": 1})


def test_parse_overrides_keeps_equals_signs_in_values():
    assert parse_overrides(["data_dir=/a=b"]) == {"data_dir": "/a=b"}

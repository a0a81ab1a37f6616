import pytest

from rlhf.config import ConfigError, diff_configs, load_config, to_dict
from rlhf.recipes.sft import SFTConfig


def test_yaml_then_overrides_with_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-4\nbatch_size: 4\nlora:\n  enabled: true\n")
    cfg = load_config(SFTConfig, path, ["lr=3e-5", "lora.r=8", "data=x.jsonl", "eval_data=null", "packing=false"])
    assert cfg.lr == 3e-5 and cfg.batch_size == 4 and cfg.lora.enabled and cfg.lora.r == 8
    assert cfg.data == "x.jsonl" and cfg.eval_data is None and cfg.packing is False


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'bach_size'.*did you mean 'batch_size'"):
        load_config(SFTConfig, None, ["bach_size=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'lora.rank'"):
        load_config(SFTConfig, None, ["lora.rank=4"])


@pytest.mark.parametrize("override, key", [("batch_size=eight", "batch_size"), ("lr=fast", "lr"),
                                           ("resume=maybe", "resume"), ("truncation=cut", "truncation")])
def test_wrong_types_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(SFTConfig, None, [override])


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(SFTConfig, path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(SFTConfig, tmp_path / "missing.yaml")


def test_diff_configs_lists_dotted_keys():
    a = to_dict(SFTConfig())
    b = to_dict(load_config(SFTConfig, None, ["lr=1", "lora.r=2"]))
    assert diff_configs(a, b) == ["lora.r", "lr"]

"""The CLI: a mistake in the input is one line and exit 2; a bug keeps its traceback."""

import pytest

import rlhf.recipes.sft as sft_recipe
from rlhf.cli import main


def test_a_user_error_prints_one_line_and_exits_2(tmp_path, capsys):
    code = main(["sft", f"output_dir={tmp_path}", "bach_size=8"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf sft: error: ") and "bach_size" in err and "Traceback" not in err
    assert main(["sft", f"output_dir={tmp_path}"]) == 2  # no data: a ConfigError
    assert "no training data" in capsys.readouterr().err


def test_an_internal_error_is_not_disguised_as_a_user_error(tmp_path, monkeypatch):
    def broken(config, **kwargs):
        raise ValueError("an internal invariant failed")

    monkeypatch.setattr(sft_recipe, "sft", broken)
    with pytest.raises(ValueError, match="internal invariant"):
        main(["sft", f"output_dir={tmp_path}", "data=x.jsonl"])

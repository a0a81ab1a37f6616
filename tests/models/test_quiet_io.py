from transformers.utils import logging as hf_logging

from rlhf.models import load_causal_lm, save_pretrained_model
from rlhf.models.reward import load_reward_model
from rlhf.testing import tiny_tokenizer


def test_loading_and_saving_print_no_progress_bars_and_leave_the_setting_alone(tiny_model_dir, tmp_path, capsys):
    assert hf_logging.is_progress_bar_enabled()
    model = load_causal_lm(tiny_model_dir)
    load_reward_model(tiny_model_dir, pad_token_id=tiny_tokenizer().pad_token_id)
    save_pretrained_model(model, None, tmp_path / "final")
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "Writing model shards" not in err
    assert hf_logging.is_progress_bar_enabled()  # silenced only around our own loads and saves

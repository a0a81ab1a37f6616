"""Run the SFT recipe on the tiny model, in-process or in a child process."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from rlhf.recipes.sft import SFTConfig, sft
from rlhf.testing import tiny_causal_lm, tiny_tokenizer
from tests.conftest import sft_rows


def run_tiny_sft(output_dir, *, rows=None, callbacks=None, dropout=0.0, **overrides):
    tok = tiny_tokenizer()
    # dropout > 0 keeps it on (it is off by default), so resume tests cover its random stream
    fields = dict(output_dir=str(output_dir), batch_size=8, lr=5e-3, max_steps=6, progress=False, seed=3,
                  disable_dropout=dropout == 0.0)
    fields.update(overrides)
    model = tiny_causal_lm(tok, seed=0, attention_dropout=dropout)
    return sft(SFTConfig(**fields), train_data=rows if rows is not None else sft_rows(32), model=model,
               tokenizer=tok, callbacks=callbacks)


def final_weights(output_dir) -> dict[str, torch.Tensor]:
    return load_file(Path(output_dir) / "final" / "model.safetensors")


def assert_same_weights(a: dict, b: dict, atol: float = 0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), f"{k} differs (max {float((a[k] - b[k]).abs().max())})"
        else:
            assert torch.allclose(a[k], b[k], atol=atol, rtol=0), f"{k} differs (max {float((a[k] - b[k]).abs().max())})"

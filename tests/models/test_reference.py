import ast
from pathlib import Path

import torch

import rlhf.models
from rlhf.data import load_rows
from rlhf.data.preference import tokenize_pairs
from rlhf.models.forward import CausalLMLogprobs
from rlhf.models.reference import ReferenceLogprobs
from rlhf.recipes.dpo import _collate, pair_logprobs
from rlhf.testing import tiny_causal_lm, tiny_tokenizer
from tests.recipes.preference_data import marker_pairs


def test_models_do_not_import_the_training_loop_or_recipes():
    # models compute; rank plumbing (sharding, all-reduce) is the caller's, passed in as rows / reduce
    for path in Path(rlhf.models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith(("rlhf.train", "rlhf.recipes", "rlhf.rollout", "..train",
                                             "..recipes", "..rollout")), f"{path.name} imports {name}"


def _reference_and_examples(n: int = 6):
    tok = tiny_tokenizer()
    examples, _ = tokenize_pairs(load_rows(marker_pairs(n, 0)), tok, max_length=128)
    collate = lambda ex: _collate(ex, pad_token_id=tok.pad_token_id, packed=True)  # noqa: E731
    return ReferenceLogprobs(policy=CausalLMLogprobs(tiny_causal_lm(tok)), ref_model=None, collate=collate,
                          pair_logprobs=pair_logprobs), examples


def test_attach_computes_only_its_rows_and_reduces_the_partial_table(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_CACHE", str(tmp_path))
    reference, examples = _reference_and_examples()
    whole = [dict(e) for e in examples]
    reference.attach(whole, batch_size=4, device="cpu", label="all", write_cache=False, progress=False)

    # two "ranks": each computes every other row; the reduction sums both partial tables
    partials = []
    for rank in (0, 1):
        reference.attach([dict(e) for e in examples], batch_size=4, device="cpu", label=f"rank {rank}",
                         rows=range(rank, len(examples), 2), reduce=lambda t: partials.append(t) or t,
                         write_cache=False, progress=False)
    assert partials[0][1::2].eq(0).all() and partials[1][0::2].eq(0).all()
    summed = (partials[0] + partials[1]).tolist()
    assert summed == [[e["ref_chosen"], e["ref_rejected"]] for e in whole]
    assert not any(Path(tmp_path).rglob("*.safetensors"))  # write_cache=False wrote nothing

    reference.attach([dict(e) for e in examples], batch_size=4, device="cpu", label="cached", progress=False)
    assert len(list(Path(tmp_path).rglob("*.safetensors"))) == 1

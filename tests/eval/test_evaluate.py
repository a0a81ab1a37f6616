"""`rlhf eval` end to end on tiny models: KL, win rates, None counts, determinism, resume,
checkpoints, over-optimisation flags, and bad inputs that fail before any model loads."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from rlhf.config import ConfigError, field_docs, load_config
from rlhf.data.errors import DataError
from rlhf.eval import evaluate as ev
from rlhf.eval.evaluate import EvalConfig, evaluate, load_checkpoint
from rlhf.models import ModelError
from rlhf.rewards import RewardError
from rlhf.testing import save_tiny_model, tiny_causal_lm, tiny_tokenizer

SCORERS = '''
def length(prompts, completions, **columns):
    return [float(len(c)) for c in completions]

def neg_length(prompts, completions, **columns):
    return [-float(len(c)) for c in completions]

def sometimes(prompts, completions, topic, **columns):
    # None on every third length: counted, never averaged in
    return [None if len(c) % 3 == 0 else float(len(c) + len(t)) for c, t in zip(completions, topic)]
'''


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    ref = save_tiny_model(root / "ref", seed=0)
    same = save_tiny_model(root / "same", seed=0)  # the reference's weights, in another directory
    other = save_tiny_model(root / "other", seed=1)
    (root / "scorers.py").write_text(SCORERS)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}: hello?", "topic": "t" * i}) + "\n"
                               for i in range(5)))
    return {"root": root, "ref": ref, "same": same, "other": other, "prompts": str(prompts),
            "scorers": str(root / "scorers.py")}


def config(world, out, **overrides):
    values = dict(policies=[world["same"]], ref_model=world["ref"], data=world["prompts"], max_new_tokens=6,
                  temperature=1.0, num_samples=2, batch_size=3, output_dir=str(out), progress=False,
                  scorers={"length": f"{world['scorers']}:length", "sometimes": f"{world['scorers']}:sometimes"})
    values.update(overrides)
    return EvalConfig(**values)


def test_reference_first_kl_zero_for_the_same_weights_and_none_counted(world, tmp_path):
    results = evaluate(config(world, tmp_path))
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert (tmp_path / "report.html").is_file()
    reference, same = results["policies"]
    assert [p["name"] for p in results["policies"]] == ["reference", "same"]
    for p in (reference, same):
        assert set(p) >= {"name", "model", "scores", "kl", "win_rate", "length", "truncated", "distinct_1",
                          "distinct_2", "samples", "overoptimisation"}
        assert len(p["samples"]) == 5 * 2
    # the reference against itself: exactly 0. The same weights loaded again: the sampler's log-probs
    # against a forward pass's, equal to rounding (a wrong temperature or token shift is ~1 nat off)
    assert reference["kl"] == {"mean": 0.0, "se": 0.0} and all(s["kl"] == 0.0 for s in reference["samples"])
    assert all(abs(s["kl"]) < 1e-4 for s in same["samples"]), [s["kl"] for s in same["samples"]]
    # the same weights with the same seeds sample the same completions: every pair ties
    assert [s["completion"] for s in same["samples"]] == [s["completion"] for s in reference["samples"]]
    assert same["win_rate"]["length"]["rate"] == 0.5 and same["win_rate"]["length"]["ties"] == 10
    # None scores are counted and left out of the mean; the topic column reached the scorer
    values = [s["scores"]["sometimes"] for s in reference["samples"]]
    kept = [v for v in values if v is not None]
    summary = reference["scores"]["sometimes"]
    assert summary["n_none"] == values.count(None) and summary["n"] == len(kept)
    assert summary["mean"] == pytest.approx(sum(kept) / len(kept))
    for s in reference["samples"]:
        if s["scores"]["sometimes"] is not None:
            assert s["scores"]["sometimes"] == len(s["completion"]) + s["prompt_index"]
    assert reference["length"]["mean"] == pytest.approx(sum(s["length"] for s in reference["samples"]) / 10)
    assert 0 <= reference["truncated"] <= 1


def test_kl_matches_the_exact_kl_of_a_one_token_bandit(world, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhf.data.io import Row
    from rlhf.data.prompts import tokenize_prompts

    tokenizer = tiny_tokenizer()
    sharp = tiny_causal_lm(tokenizer, seed=1)
    with torch.no_grad():
        sharp.model.norm.weight.mul_(8.0)  # logits x 8: far from the (near-uniform) reference
    sharp.save_pretrained(tmp_path / "sharp")
    tokenizer.save_pretrained(tmp_path / "sharp")
    rows = [{"prompt": f"bandit {i}"} for i in range(40)]
    temperature = 0.5
    results = evaluate(config(world, tmp_path / "out", policies=[str(tmp_path / "sharp")], max_new_tokens=1,
                              temperature=temperature, num_samples=15, batch_size=40, scorers={}),
                       data=rows)
    kl, samples = results["policies"][1]["kl"], results["policies"][1]["samples"]
    assert kl["mean"] == pytest.approx(sum(s["kl"] for s in samples) / len(samples)) and kl["se"] > 0

    # exact KL(pi_T || ref_T) of each prompt's next-token distribution (a naive forward of each model)
    examples, _ = tokenize_prompts([Row(f"row {i}", r) for i, r in enumerate(rows)], tokenizer, max_length=512)
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "sharp")
    reference = AutoModelForCausalLM.from_pretrained(world["ref"])
    exact = []
    with torch.no_grad():
        for e in examples:
            ids = torch.tensor([e["prompt_ids"]])
            log_p = torch.log_softmax(policy(ids).logits[0, -1].double() / temperature, -1)
            log_r = torch.log_softmax(reference(ids).logits[0, -1].double() / temperature, -1)
            exact.append(float((log_p.exp() * (log_p - log_r)).sum()))
    assert sum(exact) / len(exact) > 1.0  # a real gap, so a wrong temperature or sign could not pass
    # each sample's estimate minus its prompt's exact KL: mean 0 for an unbiased estimator, within
    # 4 standard errors (log-probs at temperature 1 instead of 0.5 would be ~8 standard errors off)
    errors = [s["kl"] - exact[s["prompt_index"]] for s in samples]
    mean = sum(errors) / len(errors)
    se = (sum((x - mean) ** 2 for x in errors) / (len(errors) - 1) / len(errors)) ** 0.5
    assert abs(mean) < 4 * se, (mean, se)


def test_same_seed_twice_gives_identical_numbers_and_seed_matters(world, tmp_path):
    first = evaluate(config(world, tmp_path / "a", policies=[world["other"]]))
    second = evaluate(config(world, tmp_path / "b", policies=[world["other"]]))
    assert (tmp_path / "a" / "eval.json").read_text() == (tmp_path / "b" / "eval.json").read_text()
    assert first == second
    assert first["policies"][1]["kl"]["mean"] != 0.0
    reseeded = evaluate(config(world, tmp_path / "c", policies=[world["other"]], seed=1))
    assert [s["completion"] for s in reseeded["policies"][1]["samples"]] != \
        [s["completion"] for s in first["policies"][1]["samples"]]


def test_a_rerun_skips_finished_policies_and_recomputes_on_new_settings(world, tmp_path, monkeypatch):
    first = evaluate(config(world, tmp_path, policies=[world["other"]]))
    assert sorted(p.name for p in (tmp_path / "policies").iterdir()) == ["other.json", "reference.json"]

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ev, "load_causal_lm", no_loading)
    assert evaluate(config(world, tmp_path, policies=[world["other"]])) == first  # nothing loaded
    with pytest.raises(AssertionError, match="a model was loaded"):
        evaluate(config(world, tmp_path, policies=[world["other"]], max_new_tokens=5))
    with pytest.raises(AssertionError, match="a model was loaded"):
        evaluate(config(world, tmp_path, policies=[world["other"]], resume=False))


def test_a_run_directory_gives_a_curve_with_its_own_sampling_settings(world, tmp_path):
    from safetensors.torch import save_file

    from rlhf.models.forward import CausalLMLogprobs
    from rlhf.train.checkpoint import MARKER, trainable_state_dict

    run = tmp_path / "myrun"
    save_tiny_model(run / "final", seed=1)
    step = run / "checkpoints" / "step-2"
    step.mkdir(parents=True)
    save_file(trainable_state_dict(CausalLMLogprobs(tiny_causal_lm(seed=2))), step / "model.safetensors")
    (step / MARKER).write_text('{"step": 2}')
    (run / "checkpoints" / ".tmp-step-4").mkdir()  # a partial checkpoint: ignored
    (run / "config.yaml").write_text(yaml.safe_dump({"model": world["ref"], "temperature": 0.5, "max_new_tokens": 3,
                                                     "lora": {"enabled": False}}))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n')
    cfg = config(world, tmp_path / "out", policies=[str(run)], checkpoints=True, ref_model=None,
                 max_new_tokens=None, temperature=None, num_samples=1,
                 scorers={"gold": f"{world['scorers']}:neg_length"}, proxy=f"{world['scorers']}:length")
    results = evaluate(cfg)
    assert [p["name"] for p in results["policies"]] == ["reference", "myrun@step-2", "myrun"]
    settings = results["settings"]
    assert (settings["temperature"], settings["max_new_tokens"], settings["ref_model"]) == (0.5, 3, world["ref"])
    assert set(settings["scorers"]) == {"gold", "proxy"}
    assert all(s["length"] <= 3 for p in results["policies"] for s in p["samples"])
    reference, step2, final = results["policies"]
    assert reference["overoptimisation"] is None
    assert step2["overoptimisation"]["vs"] == "reference" and final["overoptimisation"]["vs"] == "myrun@step-2"
    assert final["overoptimisation"]["gold"] == "gold"
    assert step2["kl"]["mean"] != 0.0 and step2["model"] == str(step)


def test_checkpoint_weights_load_full_lora_and_actor_critic(world, tmp_path):
    from safetensors.torch import save_file

    from rlhf.models import LoraConfig, apply_lora
    from rlhf.models.forward import CausalLMLogprobs
    from rlhf.train.checkpoint import trainable_state_dict

    ids = torch.tensor([[5, 70, 80, 90]])
    run_config = {"model": world["ref"], "lora": {"enabled": False}}

    def logits(model):
        with torch.no_grad():
            return model.eval()(input_ids=ids).logits

    trained = tiny_causal_lm(seed=3)
    state = trainable_state_dict(CausalLMLogprobs(trained))
    save_file(state, tmp_path / "model.safetensors")
    assert torch.allclose(logits(load_checkpoint(tmp_path, run_config)), logits(trained), atol=1e-6)

    # PPO: the policy inside an actor-critic, beside a value head
    ppo = {f"policy.{k}": v for k, v in state.items()} | {"value_head.weight": torch.zeros(1, 32)}
    save_file(ppo, tmp_path / "model.safetensors")
    assert torch.allclose(logits(load_checkpoint(tmp_path, run_config)), logits(trained), atol=1e-6)

    # LoRA: adapters only, applied to the run's starting model and merged
    lora = {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    peft = apply_lora(tiny_causal_lm(seed=0), LoraConfig(**lora))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    save_file(trainable_state_dict(CausalLMLogprobs(peft)), tmp_path / "model.safetensors")
    loaded = load_checkpoint(tmp_path, {"model": world["ref"], "lora": lora})
    assert not hasattr(loaded, "peft_config")
    expected = logits(peft)
    assert not torch.allclose(expected, logits(tiny_causal_lm(seed=0)), atol=1e-3)
    assert torch.allclose(logits(loaded), expected, atol=1e-5)


def test_a_corrupt_checkpoint_is_named_not_evaluated(world, tmp_path):
    from safetensors.torch import save_file

    from rlhf.models.forward import CausalLMLogprobs
    from rlhf.train.checkpoint import CheckpointError, trainable_state_dict, write_manifest

    save_file(trainable_state_dict(CausalLMLogprobs(tiny_causal_lm(seed=3))), tmp_path / "model.safetensors")
    write_manifest(tmp_path)
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[-5] ^= 0x01
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match the SHA-256"):
        load_checkpoint(tmp_path, {"model": world["ref"], "lora": {"enabled": False}})


def test_planted_proxy_gold_divergence_is_flagged_through_the_cli(world, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from rlhf.cli import main

    # a reference that stops after one token (every id ends a completion) and a policy, the same
    # weights, that writes on: a longer answer pleases the proxy and displeases gold
    short = tmp_path / "short"
    model = AutoModelForCausalLM.from_pretrained(world["ref"])
    model.generation_config.eos_token_id = list(range(model.config.vocab_size))
    model.save_pretrained(short)
    tiny_tokenizer().save_pretrained(short)
    code = main(["eval", f"policies=[{world['same']}]", f"ref_model={short}", f"data={world['prompts']}",
                 "max_new_tokens=8", "num_samples=2", f"output_dir={tmp_path / 'out'}", "progress=false",
                 f"scorers.gold={world['scorers']}:neg_length", f"proxy={world['scorers']}:length"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "reference" in printed and "over-opt" in printed
    results = json.loads((tmp_path / "out" / "eval.json").read_text())
    reference, policy = results["policies"]
    assert reference["length"]["mean"] == 1.0
    mark = policy["overoptimisation"]
    assert mark["flagged"] and mark["vs"] == "reference" and mark["proxy_delta"] > 0 > mark["gold_delta"]
    assert policy["win_rate"]["proxy"]["rate"] > 0.5 > policy["win_rate"]["gold"]["rate"]
    # proxy = length, gold = -length: every pair of samples with a gold order is ordered the other way
    agreement = results["proxy_agreement"]
    assert agreement["gold"] == "gold" and agreement["agreement"] == 0.0 and agreement["pairs"] > 0
    assert f"proxy agreement with gold: 0.000 of {agreement['pairs']} pairs" in printed


def test_scorers_is_a_mapping_in_yaml_and_on_the_command_line(tmp_path):
    file = tmp_path / "eval.yaml"
    file.write_text("scorers:\n  gold: a.py:f\npolicies: [x]\n")
    cfg = load_config(EvalConfig, file, ["scorers.len=b.py:g", "scorers.gold=c.py:h"])
    assert cfg.scorers == {"gold": "c.py:h", "len": "b.py:g"} and cfg.policies == ["x"]
    assert load_config(EvalConfig, None, ['scorers={"a": "m:f"}']).scorers == {"a": "m:f"}
    with pytest.raises(ConfigError, match="'scorers': expected a mapping"):
        load_config(EvalConfig, None, ["scorers=a.py:f"])
    with pytest.raises(ConfigError, match="scorers.gold"):
        load_config(EvalConfig, None, ["scorers.gold=[1, 2]"])
    assert ("scorers", "dict[str, str]") in [(name, kind) for name, kind, _, _ in field_docs(EvalConfig)]
    assert EvalConfig().scorers == {} and EvalConfig().scorers is not EvalConfig().scorers


def test_bad_inputs_fail_before_any_model_loads(world, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ev, "load_causal_lm", no_loading)

    # a policy with another vocabulary
    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    alien = save_tiny_model(tmp_path / "alien", tokenizer=tokenizer)
    with pytest.raises(ModelError, match="policy 'alien': its tokenizer .* differs from the reference"):
        evaluate(config(world, tmp_path / "o", policies=[world["same"], alien]))

    # a run directory that never finished
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("model: x\n")
    with pytest.raises(ConfigError, match="run directory with no final/"):
        evaluate(config(world, tmp_path / "o", policies=[str(unfinished)]))

    # prompts with no rows
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no rows"):
        evaluate(config(world, tmp_path / "o", data=str(empty)))
    with pytest.raises(ConfigError, match="no prompts"):
        evaluate(config(world, tmp_path / "o", data=None))

    # a scorer spec that does not resolve (after a good one that would load first)
    bad = {"length": f"{world['scorers']}:length", "rm": str(tmp_path / "no_such_reward_model")}
    with pytest.raises(RewardError, match="scorer 'rm'.*no such directory"):
        evaluate(config(world, tmp_path / "o", scorers=bad))
    with pytest.raises(RewardError, match="scorer 'x'.*no attribute 'missing'"):
        evaluate(config(world, tmp_path / "o", scorers={"x": f"{world['scorers']}:missing"}))
    with pytest.raises(RewardError, match="scorer 'w'"):
        evaluate(config(world, tmp_path / "o", scorers={"w": f"1.0*{world['scorers']}:length, 2*nowhere/x"}))

    # a proxy clashing with a scorer's name, an unknown model, no policies
    with pytest.raises(ConfigError, match="named 'proxy'"):
        evaluate(config(world, tmp_path / "o", scorers={"proxy": f"{world['scorers']}:length"},
                        proxy=f"{world['scorers']}:length"))
    with pytest.raises(ModelError, match="neither a local directory"):
        evaluate(config(world, tmp_path / "o", policies=[str(tmp_path / "nothing")]))
    with pytest.raises(ConfigError, match="no policies"):
        evaluate(config(world, tmp_path / "o", policies=[]))
    with pytest.raises(ConfigError, match="top_p"):
        evaluate(config(world, tmp_path / "o", top_p=0.0))
    assert not (tmp_path / "o").exists()


def test_example_config_loads_and_its_scorers_resolve(monkeypatch):
    from rlhf.recipes._shared import read_rows

    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    cfg = load_config(EvalConfig, root / "examples" / "eval.yaml")
    rows = read_rows(cfg.data, "prompt")
    columns = sorted({k for row in rows for k in row.data if k != "prompt"})
    for name, spec in {**cfg.scorers, "proxy": cfg.proxy}.items():
        ev._check_reward_spec(name, spec, columns)
    assert cfg.checkpoints and cfg.policies == ["runs/grpo-demo"]


def test_in_memory_models_data_and_scorers_are_left_as_they_were(world, tmp_path):
    tokenizer = tiny_tokenizer()
    reference, policy = tiny_causal_lm(tokenizer, seed=0), tiny_causal_lm(tokenizer, seed=1)
    modes = lambda model: {name: m.training for name, m in model.named_modules()}  # noqa: E731
    for model in (policy, reference):
        model.train()
        model.lm_head.eval()  # mixed modes: each module's own mode must come back, not one for the model
    policy_modes, reference_modes = modes(policy), modes(reference)
    rows = [{"prompt": "say something"}, {"prompt": "and more"}]
    cfg = EvalConfig(max_new_tokens=4, output_dir=str(tmp_path), progress=False)
    results = evaluate(cfg, data=rows, policies={"mine": policy}, ref_model=reference, tokenizer=tokenizer,
                       scorers={"chars": lambda prompts, completions, **columns: [float(len(c)) for c in completions]})
    assert [p["name"] for p in results["policies"]] == ["reference", "mine"]
    assert results["settings"]["data"] == "<memory>" and results["settings"]["ref_model"] == "<memory>"
    assert results["policies"][1]["scores"]["chars"]["n"] == 2 and results["policies"][1]["kl"]["mean"] != 0
    assert modes(policy) == policy_modes and policy.training and not policy.lm_head.training
    assert all(p.requires_grad for p in policy.parameters())
    assert modes(reference) == reference_modes and reference.training and not reference.lm_head.training


def test_scorer_files_of_every_spec_form_are_stamped_for_resume(world, tmp_path):
    # an edit to any file a scorer reads must change the fingerprint, whatever form names it
    other = tmp_path / "other.py"
    other.write_text("def f(prompts, completions, **columns):\n    return [0.0] * len(completions)\n")
    scorers, stamp = world["scorers"], ev._spec_stamp
    plain = stamp(f"{scorers}:length")
    assert [s[0] for s in plain] == ["scorers.py"]
    assert [s[0] for s in stamp(f"0.5*{scorers}:length, 2*{other}:f")] == ["scorers.py", "other.py"]
    assert [s[0] for s in stamp([[f"{scorers}:length", 0.5], {"spec": f"{other}:f"}])] == ["scorers.py", "other.py"]
    assert stamp(lambda prompts, completions: completions) is None
    before = stamp(f"1*{other}:f")
    other.write_text(other.read_text() + "\n# edited\n")
    assert stamp(f"1*{other}:f") != before

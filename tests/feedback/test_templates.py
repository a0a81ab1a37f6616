"""Judge prompts: rendering, few-shot turns, the template hash, and file errors before any model loads."""

import json

import pytest

from rlhf.config import ConfigError
from rlhf.feedback import JudgeOptions, JudgePrompt, check_judge_options, default_template, judge_prompt
from rlhf.feedback.templates import CUE, DEFAULT_CRITERIA
from tests.feedback.scripted import refuse_model_loads


@pytest.fixture
def no_model_loads(monkeypatch):
    refuse_model_loads(monkeypatch)


def write(path, text):
    path.write_text(text)
    return str(path)


def jsonl(path, rows):
    return write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_single_pass_rendering_keeps_placeholders_inside_the_item():
    prompt = JudgePrompt("pointwise")
    text = prompt.user_message("Q {completion}", "A says {prompt} and {rubric}")
    assert "[User's request]\nQ {completion}\n" in text and "[Response]\nA says {prompt} and {rubric}\n" in text
    assert text.startswith(DEFAULT_CRITERIA) and text.endswith("Answer Yes or No.")
    custom = JudgePrompt("pairwise", template='{"json": 1} {first} vs {second} on {prompt}; {unknown}')
    assert custom.user_message("p", "x", "y") == '{"json": 1} x vs y on p; {unknown}'


def test_chat_message_items_render_as_text():
    prompt = JudgePrompt("pointwise", template="{prompt} -> {completion}")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert prompt.user_message(messages, [{"role": "assistant", "content": "Hello"}]) == \
        "System: Be brief.\n\nUser: Hi -> Hello"


def test_few_shot_examples_are_turns_with_their_verdicts():
    examples = [{"prompt": "p1", "completion": "great", "label": True},
                {"prompt": "p2", "completion": "awful", "label": False}]
    prompt = judge_prompt("pointwise", few_shot=examples, system="You judge.", files=False)
    messages = prompt.messages("p3", "fine")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [messages[2]["content"], messages[4]["content"]] == ["Yes", "No"]
    assert "great" in messages[1]["content"] and "fine" in messages[5]["content"]
    pairwise = judge_prompt("pairwise", few_shot=[{"prompt": "p", "first": "a", "second": "b", "winner": 2,
                                                   "rationale": "b is kinder."}], rationale=True, files=False)
    assert pairwise.messages("q", "x", "y")[1]["content"] == f"b is kinder.\n{CUE} 2"


def test_plain_text_rendering_with_custom_verdict_words():
    examples = [{"prompt": "p1", "completion": "great", "label": True},
                {"prompt": "p2", "completion": "awful", "label": False}]
    prompt = judge_prompt("pointwise", template="Review: {completion}\nThe sentiment is", few_shot=examples,
                          system="Movie reviews.", chat=False, verdict_words=["positive", "negative"], files=False)
    assert prompt.choices == ["positive", "negative"]
    assert prompt.text("p3", "fine") == ("Movie reviews.\n\nReview: great\nThe sentiment is positive\n\n"
                                         "Review: awful\nThe sentiment is negative\n\nReview: fine\nThe sentiment is")


@pytest.mark.parametrize("kwargs, message", [
    ({"verdict_words": ("good", "good")}, "two different"),
    ({"verdict_words": (" good", "bad")}, "surrounding spaces"),
    ({"verdict_words": ("good",)}, "two different"),
    ({"verdict_words": ("good", "bad"), "verdict": "rating"}, "yes_no verdicts only"),
])
def test_bad_verdict_words_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        JudgePrompt("pointwise", **kwargs)


def test_the_template_sha_covers_everything_but_the_item():
    base = JudgePrompt("pointwise")
    assert base.sha == JudgePrompt("pointwise").sha and len(base.sha) == 64
    variants = [JudgePrompt("pairwise"), JudgePrompt("pointwise", system="s"), JudgePrompt("pointwise", rubric="r"),
                JudgePrompt("pointwise", rationale=True), JudgePrompt("pointwise", verdict="rating"),
                JudgePrompt("pointwise", template=default_template("pointwise") + " "),
                judge_prompt("pointwise", few_shot=[{"prompt": "p", "completion": "c", "label": True}], files=False),
                JudgePrompt("pointwise", chat=False), JudgePrompt("pointwise", verdict_words=("good", "bad"))]
    assert len({base.sha, *(v.sha for v in variants)}) == 1 + len(variants)


@pytest.mark.parametrize("kind, text, missing", [
    ("pointwise", "Is this good? {prompt}", "{completion}"),
    ("pairwise", "Which? {prompt} {first}", "{second}"),
    ("pairwise", "Which? {prompt} {second}", "{first}"),
])
def test_a_template_without_its_item_placeholder_is_an_error_naming_file_and_placeholder(
        tmp_path, no_model_loads, kind, text, missing):
    path = write(tmp_path / "judge.txt", text)
    with pytest.raises(ConfigError, match=f"{path}.*must contain \\{missing}"):
        check_judge_options(JudgeOptions(judge_kind=kind, template=path))


def test_template_rubric_rationale_and_file_errors(tmp_path, no_model_loads):
    rubric = write(tmp_path / "rubric.txt", "Be kind.")
    no_rubric = write(tmp_path / "plain.txt", "{prompt} {completion} Yes or No?")
    with pytest.raises(ConfigError, match=f"{no_rubric}.*no {{rubric}} placeholder"):
        check_judge_options(JudgeOptions(template=no_rubric, rubric=rubric))
    with pytest.raises(ConfigError, match="rationale mode.*'Verdict:'"):
        check_judge_options(JudgeOptions(template=no_rubric, rationale=True))
    with pytest.raises(ConfigError, match=r"\{first\} belongs in a pairwise template"):
        check_judge_options(JudgeOptions(template=write(tmp_path / "mixed.txt", "{completion} {first}")))
    with pytest.raises(ConfigError, match="config key 'template': no such file"):
        check_judge_options(JudgeOptions(template=str(tmp_path / "missing.txt")))
    with pytest.raises(ConfigError, match="config key 'judge'.*neither a local model directory"):
        check_judge_options(JudgeOptions(judge=str(tmp_path)))
    with pytest.raises(ConfigError, match="judge_batch_size"):
        check_judge_options(JudgeOptions(judge_batch_size=0))
    # a rubric given with a template that renders it
    prompt = check_judge_options(JudgeOptions(rubric=rubric))
    assert prompt.user_message("p", "c").startswith("Be kind.\n\n")


@pytest.mark.parametrize("kind, row, message", [
    ("pointwise", {"prompt": "p", "label": True}, "missing field 'completion'"),
    ("pointwise", {"prompt": "p", "completion": "c"}, "missing field 'label'"),
    ("pointwise", {"prompt": "p", "completion": "c", "label": "yes"}, "field 'label': expected true or false"),
    ("pointwise", {"prompt": 3, "completion": "c", "label": True}, "field 'prompt'"),
    ("pairwise", {"prompt": "p", "first": "a", "second": "b", "winner": 3}, "field 'winner': expected 1 or 2"),
    ("pairwise", {"prompt": "p", "first": "a", "winner": 1}, "missing field 'second'"),
    ("pointwise", "[1, 2]", "expected a JSON object, got list"),
    ("pointwise", "{not json", "not a JSON object"),
])
def test_bad_few_shot_rows_name_file_line_and_field(tmp_path, no_model_loads, kind, row, message):
    good = ({"prompt": "p", "completion": "c", "label": True} if kind == "pointwise"
            else {"prompt": "p", "first": "a", "second": "b", "winner": 1})
    path = jsonl(tmp_path / "shots.jsonl", [good, row])
    with pytest.raises(ConfigError, match=f"{path}:2: {message}"):
        check_judge_options(JudgeOptions(judge_kind=kind, few_shot=path))


def test_few_shot_file_loads_and_an_empty_one_is_an_error(tmp_path, no_model_loads):
    path = jsonl(tmp_path / "shots.jsonl", [{"prompt": "p", "completion": "c", "label": False}, ""])
    assert check_judge_options(JudgeOptions(few_shot=path)).examples == ({"prompt": "p", "completion": "c",
                                                                          "label": False},)
    with pytest.raises(ConfigError, match="holds no examples"):
        check_judge_options(JudgeOptions(few_shot=write(tmp_path / "empty.jsonl", "\n")))
    rating = jsonl(tmp_path / "rating.jsonl", [{"prompt": "p", "completion": "c", "rating": 12}])
    with pytest.raises(ConfigError, match="rating.jsonl:1: field 'rating': expected an integer from 1 to 9"):
        check_judge_options(JudgeOptions(few_shot=rating, judge_verdict="rating"))

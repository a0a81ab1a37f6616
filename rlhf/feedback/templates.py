"""What a judge reads: the prompt template, rubric, system message and few-shot examples.

A `JudgePrompt` renders one item as a chat conversation:

    [system]                   the system message, if any
    [user, assistant] * k      the few-shot examples: the template filled with an example, then its verdict
    [user]                     the template filled with the item (then the chat template's generation prompt)

or, with chat=False, as plain text the judge continues (a base LM, or a chat model asked in the
form of a completion, which small models read better than a question):

    system + blank line                             the system text, if any
    (template + " " + verdict + blank line) * k     the few-shot examples
    template                                        filled with the item; the verdict is the next word

Placeholders (single pass: a text containing "{prompt}" is not substituted again; other braces
stay as written):

    pointwise   {prompt} {completion}             + optional {rubric}   (+ {low} {high} for ratings)
    pairwise    {prompt} {first} {second}         + optional {rubric}

{completion} (pointwise) and {first} and {second} (pairwise) are required; {rubric} is required
when a rubric file is given (else it renders `DEFAULT_CRITERIA`). The verdict is read from the
judge's next-token distribution (`rlhf.feedback.judge`):

    pointwise, verdict=yes_no   "Yes" / "No" (or other verdict_words, the good one first):
                                score = log P(Yes) - log P(No)
    pointwise, verdict=rating   "1".."9" (scale): score = the expected rating (RLAIF's soft score)
    pairwise                    "1" / "2": P(first is better) = P(1) / (P(1) + P(2))

In rationale mode the judge first writes its reasoning and ends with the cue line "Verdict: X";
the template must ask for that cue, and the verdict is read right after it.

Few-shot files are JSONL, one example per line:

    pointwise (yes_no)   {"prompt": P, "completion": C, "label": true | false}
    pointwise (rating)   {"prompt": P, "completion": C, "rating": k}
    pairwise             {"prompt": P, "first": C1, "second": C2, "winner": 1 | 2}

each with an optional "rationale" string, shown before the cue in rationale mode.

`JudgePrompt.sha` hashes everything rendered into the judge prompt except the item: labels
record it (`template_sha`), and the judge cache keys on it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.config import ConfigError
from rlhf.data.errors import DataError

KINDS = ("pairwise", "pointwise")
VERDICTS = ("yes_no", "rating")  # pointwise verdicts; a pairwise judge names the answer it prefers
CUE = "Verdict:"

DEFAULT_CRITERIA = (
    "A good response does what the user asked: it is helpful, correct, clear and harmless."
)

POINTWISE_TEMPLATE = (
    "{rubric}\n\n"
    "[User's request]\n{prompt}\n\n"
    "[Response]\n{completion}\n\n"
)
PAIRWISE_TEMPLATE = (
    "{rubric}\n\n"
    "[User's request]\n{prompt}\n\n"
    "[Response 1]\n{first}\n\n"
    "[Response 2]\n{second}\n\n"
)
# The rating rubric of `judge:<model>` rewards (RLAIF sec. 2.1), kept word for word.
RATING_TEMPLATE = (
    "Rate the response to the user's request on a scale of {low} to {high}, where {low} means the response "
    "is unhelpful, wrong or harmful, and {high} means it is helpful, correct, clear and harmless.\n\n"
    "[User's request]\n{prompt}\n\n"
    "[Response]\n{completion}\n\n"
)
_QUESTIONS = {  # (verdict, rationale) -> the template's last line
    ("yes_no", False): "Is the response good? Answer Yes or No.",
    ("yes_no", True): f"Is the response good? Explain briefly, then end with a line '{CUE} Yes' or '{CUE} No'.",
    ("rating", False): "Answer with a single digit from {low} to {high}.",
    ("rating", True): f"Explain briefly, then end with a line '{CUE} N', N a single digit from {{low}} to {{high}}.",
    ("first_second", False): "Which response is better? Answer 1 or 2.",
    ("first_second", True): f"Which response is better? Explain briefly, then end with a line '{CUE} 1' or "
                            f"'{CUE} 2'.",
}

ITEM_FIELDS = {"pointwise": ("prompt", "completion"), "pairwise": ("prompt", "first", "second")}
_REQUIRED = {"pointwise": ("completion",), "pairwise": ("first", "second")}
_PLACEHOLDER = re.compile(r"\{(prompt|completion|first|second|rubric|low|high)\}")


def default_template(kind: str, verdict: str = "yes_no", rationale: bool = False) -> str:
    """The built-in user-message template of a judge kind (and pointwise verdict)."""
    if kind == "pairwise":
        return PAIRWISE_TEMPLATE + _QUESTIONS["first_second", rationale]
    return (RATING_TEMPLATE if verdict == "rating" else POINTWISE_TEMPLATE) + _QUESTIONS[verdict, rationale]


def as_text(value) -> str:
    """A prompt or completion as plain text for a template.

    A string is itself; one chat message is its content; several are a transcript of
    "Role: content" paragraphs (a multi-turn prompt keeps who said what).
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise DataError(f"expected a string or a list of chat messages, got {type(value).__name__}")
    contents = []
    for message in value:
        if not isinstance(message, dict) or "content" not in message:
            raise DataError(f"expected chat messages ({{'role', 'content'}} dicts), got {message!r:.80}")
        content = message["content"]
        if not isinstance(content, str):  # multimodal content parts: keep the text ones
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        contents.append((str(message.get("role", "user")), content))
    if len(contents) == 1:
        return contents[0][1]
    return "\n\n".join(f"{role.capitalize()}: {content}" for role, content in contents)


def fill(template: str, values: dict[str, str]) -> str:
    """`template` with the placeholders named in `values` filled in, in one pass."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)


@dataclass(frozen=True)
class JudgePrompt:
    """Everything in a judge's prompt except the item, and how its verdict is read.

    kind: "pairwise" or "pointwise". verdict: pointwise "yes_no" or "rating" ("first_second" for
    pairwise). template: the user message (see the module docstring for placeholders).
    examples: few-shot rows (checked). scale: (low, high) of ratings. cue: the line that ends a
    rationale, right before the verdict token. chat: render as a chat conversation (True) or as
    plain text to continue. verdict_words: a yes_no verdict's (good, bad) words.
    """

    kind: str = "pointwise"
    template: str | None = None  # None: `default_template(kind, verdict, rationale)`
    system: str | None = None
    examples: tuple = ()
    rubric: str | None = None
    rationale: bool = False
    verdict: str = "yes_no"
    scale: tuple[int, int] = (1, 9)
    cue: str = CUE
    chat: bool = True
    verdict_words: tuple[str, str] = ("Yes", "No")
    where: str = field(default="template", compare=False)  # names the template in errors

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"judge_kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        verdict = "first_second" if self.kind == "pairwise" else self.verdict
        if self.kind == "pointwise" and verdict not in VERDICTS:
            raise ConfigError(f"judge verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
        object.__setattr__(self, "verdict", verdict)
        words = tuple(self.verdict_words)
        if (len(words) != 2 or not all(isinstance(w, str) and w and w.strip() == w for w in words)
                or words[0] == words[1]):
            raise ConfigError(f"verdict_words must be two different non-empty words (good first, no surrounding "
                              f"spaces), got {self.verdict_words!r}")
        if words != ("Yes", "No") and verdict != "yes_no":
            raise ConfigError(f"verdict_words apply to yes_no verdicts only, not {verdict}")
        object.__setattr__(self, "verdict_words", words)
        if verdict == "rating":
            low, high = _check_scale(self.scale)
            object.__setattr__(self, "scale", (low, high))
        if self.template is None:
            object.__setattr__(self, "template", default_template(self.kind, verdict, self.rationale))
        check_template(self.template, self.kind, where=self.where, rubric=self.rubric is not None,
                       rationale_cue=self.cue if self.rationale else None)
        object.__setattr__(self, "examples", tuple(self.examples))

    @property
    def choices(self) -> list[str]:
        """The verdict strings, in the order of the judge's verdict probabilities."""
        if self.verdict == "first_second":
            return ["1", "2"]
        if self.verdict == "yes_no":
            return list(self.verdict_words)
        low, high = self.scale
        return [str(k) for k in range(low, high + 1)]

    @property
    def sha(self) -> str:
        """sha256 of everything rendered into the judge prompt except the item."""
        settings = {"kind": self.kind, "verdict": self.verdict, "template": self.template, "system": self.system,
                    "examples": list(self.examples), "rubric": self.rubric, "rationale": self.rationale,
                    "scale": list(self.scale) if self.verdict == "rating" else None, "cue": self.cue}
        if not self.chat or self.verdict_words != ("Yes", "No"):  # keeps the sha of older chat judges
            settings.update(chat=self.chat, verdict_words=list(self.verdict_words))
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def user_message(self, prompt, *texts) -> str:
        """The template filled with one item: (prompt, completion) or (prompt, first, second)."""
        names = ITEM_FIELDS[self.kind]
        if len(texts) != len(names) - 1:
            raise ValueError(f"a {self.kind} judge item is ({', '.join(names)}), got {1 + len(texts)} values")
        values = dict(zip(names, [as_text(prompt), *(as_text(t) for t in texts)]))
        return fill(self.template, {**self._fixed_values(), **values})

    def _fixed_values(self) -> dict[str, str]:
        low, high = self.scale
        return {"rubric": self.rubric if self.rubric is not None else DEFAULT_CRITERIA, "low": str(low),
                "high": str(high)}

    def answer(self, example: dict) -> str:
        """A few-shot example's assistant turn: the verdict (after its rationale and the cue in rationale mode)."""
        if self.verdict == "first_second":
            verdict = str(example["winner"])
        elif self.verdict == "yes_no":
            verdict = self.verdict_words[0] if example["label"] else self.verdict_words[1]
        else:
            verdict = str(example["rating"])
        if not self.rationale:
            return verdict
        rationale = example.get("rationale")
        return f"{rationale.strip()}\n{self.cue} {verdict}" if rationale else f"{self.cue} {verdict}"

    def messages(self, prompt, *texts) -> list[dict]:
        """The chat conversation for one item (the chat template adds the generation prompt)."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for example in self.examples:
            fields = [example[name] for name in ITEM_FIELDS[self.kind]]
            messages.append({"role": "user", "content": self.user_message(*fields)})
            messages.append({"role": "assistant", "content": self.answer(example)})
        messages.append({"role": "user", "content": self.user_message(prompt, *texts)})
        return messages

    def text(self, prompt, *texts) -> str:
        """The plain text for one item (chat=False): the judge's next word is the verdict."""
        parts = [self.system.strip()] if self.system else []
        for example in self.examples:
            fields = [example[name] for name in ITEM_FIELDS[self.kind]]
            parts.append(f"{self.user_message(*fields).rstrip()} {self.answer(example)}")
        parts.append(self.user_message(prompt, *texts).rstrip())
        return "\n\n".join(parts)


def _check_scale(scale) -> tuple[int, int]:
    try:
        low, high = scale
    except (TypeError, ValueError):
        raise ConfigError(f"scale must be a (low, high) pair of integers, got {scale!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (low, high)) or not 0 <= low < high:
        raise ConfigError(f"scale must be (low, high) integers with 0 <= low < high, got {scale!r}")
    return low, high


def check_template(template: str, kind: str, *, where: str = "template", rubric: bool = False,
                   rationale_cue: str | None = None) -> None:
    """A ConfigError naming `where` and the placeholder a `kind` template lacks (or must not have)."""
    if not isinstance(template, str) or not template.strip():
        raise ConfigError(f"{where}: the judge template is empty")
    present = set(_PLACEHOLDER.findall(template))
    for name in _REQUIRED[kind]:
        if name not in present:
            raise ConfigError(f"{where}: a {kind} judge template must contain {{{name}}} (placeholders: "
                              f"{', '.join('{' + n + '}' for n in ITEM_FIELDS[kind])}, optional {{rubric}})")
    foreign = sorted(present & ({"first", "second"} if kind == "pointwise" else {"completion"}))
    if foreign:
        raise ConfigError(f"{where}: placeholder {{{foreign[0]}}} belongs in a "
                          f"{'pairwise' if kind == 'pointwise' else 'pointwise'} template, not a {kind} one")
    if rubric and "rubric" not in present:
        raise ConfigError(f"{where}: a rubric is given but the template has no {{rubric}} placeholder to render it")
    if rationale_cue is not None and rationale_cue not in template:
        raise ConfigError(f"{where}: in rationale mode the template must ask the judge to end with a line "
                          f"'{rationale_cue} <verdict>' (the text {rationale_cue!r} does not appear in it)")


def read_text_file(path: str | Path, key: str) -> str:
    """A UTF-8 text file named by config `key`, or a ConfigError naming both."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"config key '{key}': no such file {str(path)!r}")
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"config key '{key}': cannot read {str(path)!r}: {error}") from None


def load_examples(path: str | Path, kind: str, verdict: str = "yes_no", scale: tuple[int, int] = (1, 9)) -> list[dict]:
    """Few-shot rows from a JSONL file, each checked; a bad row is a ConfigError naming file:line and field."""
    text = read_text_file(path, "few_shot")
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ConfigError(f"{where}: not a JSON object ({error.msg})") from None
        examples.append(check_example(row, kind, verdict, scale, where))
    if not examples:
        raise ConfigError(f"{path}: the few-shot file holds no examples")
    return examples


def check_example(row: Any, kind: str, verdict: str, scale: tuple[int, int], where: str) -> dict:
    """One few-shot row, with the fields its judge kind needs (see the module docstring)."""
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if kind == "pairwise":
        label, ok, expected = "winner", lambda v: v in (1, 2) and not isinstance(v, bool), "1 or 2"
    elif verdict == "rating":
        low, high = scale
        label, ok, expected = ("rating", lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high,
                               f"an integer from {low} to {high}")
    else:
        label, ok, expected = "label", lambda v: isinstance(v, bool), "true or false"
    for name in ITEM_FIELDS[kind]:
        if name not in row:
            raise ConfigError(f"{where}: missing field '{name}' (a {kind} example has "
                              f"{', '.join(ITEM_FIELDS[kind])}, {label})")
        try:
            as_text(row[name])
        except DataError as error:
            raise ConfigError(f"{where}: field '{name}': {error}") from None
    if label not in row:
        raise ConfigError(f"{where}: missing field '{label}' ({expected})")
    if not ok(row[label]):
        raise ConfigError(f"{where}: field '{label}': expected {expected}, got {row[label]!r:.40}")
    if "rationale" in row and not isinstance(row["rationale"], str):
        raise ConfigError(f"{where}: field 'rationale': expected a string, got {type(row['rationale']).__name__}")
    return {k: row[k] for k in (*ITEM_FIELDS[kind], label, "rationale") if k in row}


def judge_prompt(kind: str = "pointwise", *, template: str | Path | None = None, few_shot: str | Path | list | None = None,
                 rubric: str | Path | None = None, system: str | None = None, rationale: bool = False,
                 verdict: str = "yes_no", scale: tuple[int, int] = (1, 9), files: bool = True, chat: bool = True,
                 verdict_words: tuple[str, str] | list[str] | None = None) -> JudgePrompt:
    """A checked JudgePrompt. files=True: template, few_shot and rubric name files (the config keys);
    files=False: template and rubric are the texts themselves (few_shot may be a list of rows either way)."""
    where = "template"
    if template is not None and files:
        where = str(template)
        template = read_text_file(template, "template")
    if rubric is not None and files:
        rubric = read_text_file(rubric, "rubric").strip()
    verdict = "first_second" if kind == "pairwise" else verdict
    if few_shot is None:
        examples = []
    elif isinstance(few_shot, (list, tuple)):
        examples = [check_example(row, kind, verdict, scale, f"few-shot example {i}") for i, row in enumerate(few_shot)]
    else:
        examples = load_examples(few_shot, kind, verdict, scale)
    return JudgePrompt(kind=kind, template=template, system=system, examples=tuple(examples), rubric=rubric,
                       rationale=rationale, verdict=verdict, scale=tuple(scale), chat=chat,
                       verdict_words=tuple(verdict_words) if verdict_words else ("Yes", "No"), where=where)

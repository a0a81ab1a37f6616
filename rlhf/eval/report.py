"""`rlhf report`: one self-contained report.html from eval outputs, training runs and RLAIF label reports.

The page answers three questions a reader has after training: did alignment work (gold score
against the reference), at what price in KL (the frontier, Rafailov et al. 2023, arXiv
2305.18290, fig. 2 left), and is the reward being gamed (proxy rising while gold falls, Gao et
al. 2022, arXiv 2210.10760). Plots are PNG images embedded as data URIs and the styling is one
inline <style>: the file opens anywhere, offline, and can be mailed as it is.

Inputs are read and checked before any plot is drawn; every piece of text that came from a
model or a file is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rlhf.config import option
from rlhf.errors import UserError
from rlhf.eval import plots, verdict
from rlhf.eval.metrics import finite_or_none

EVAL_FILE, LABEL_FILE, METRICS_FILE = "eval.json", "label_report.json", "metrics.jsonl"
TRAINING_METRICS = ("reward", "loss", "kl", "completion_length")  # plotted when any run logs them
SAMPLE_PROMPTS = 5  # prompts shown side by side
EXAMPLE_CHARS = 200  # a completion in `summary_text`'s example is cut to this many characters
CHECKPOINT_NAME = re.compile(r"^(?P<run>.+)@step-(?P<step>\d+)$")  # `rlhf eval checkpoints=true` names
BON_NAME = re.compile(r"^bon:(?P<n>\d+)$")  # `rlhf eval` best-of-N points
SECTIONS = {  # id -> heading, in page order
    "verdict": "Did it work?",
    "frontier": "Reward vs KL",
    "samples": "Same prompt, side by side",
    "eval-table": "Evaluation",
    "training": "Training curves",
    "labels": "RLAIF label quality",
}


class ReportInputError(UserError, ValueError):
    """A path given to `rlhf report` is not a run, eval or label output, or its file is malformed."""


@dataclass
class ReportConfig:
    paths: list[str] = option([], "training run dirs (metrics.jsonl), eval output dirs (eval.json) or label output dirs (label_report.json)")
    output: str = option("report.html", "the HTML file to write")


def report(config: ReportConfig) -> Path:
    """Sort `config.paths` by what they contain, then write the report to `config.output`."""
    eval_files, run_dirs, label_files = classify_paths([Path(p) for p in config.paths])
    if len(eval_files) > 1:
        raise ReportInputError(f"give one eval output, not {len(eval_files)} ({', '.join(map(str, eval_files))}): "
                               "their policies were scored on different prompts and settings")
    eval_results = read_json(eval_files[0]) if eval_files else None
    return write_report(config.output, eval_results=eval_results, run_dirs=run_dirs, label_reports=label_files)


def classify_paths(paths: list[Path]) -> tuple[list[Path], list[Path], list[Path]]:
    """(eval.json files, run directories, label_report.json files), recognised by their content."""
    if not paths:
        raise ReportInputError("no paths given: name training run, eval output or label output directories")
    evals, runs, labels = [], [], []
    for path in paths:
        if not path.exists():
            raise ReportInputError(f"{path}: no such file or directory")
        if path.is_file():
            kind = {EVAL_FILE: evals, LABEL_FILE: labels, METRICS_FILE: runs}.get(path.name)
            if kind is None:
                raise ReportInputError(f"{path}: expected a directory, or a file named {EVAL_FILE}, {LABEL_FILE} or {METRICS_FILE}")
            kind.append(path.parent if kind is runs else path)
            continue
        found = False
        for name, kind in ((EVAL_FILE, evals), (LABEL_FILE, labels), (METRICS_FILE, runs)):
            if (path / name).is_file():
                kind.append(path if kind is runs else path / name)
                found = True
        if not found:
            inside = sorted(p.name for p in path.iterdir() if p.is_dir() and any(
                (p / name).is_file() for name in (EVAL_FILE, LABEL_FILE, METRICS_FILE)))
            hint = f"; these directories inside it are: {', '.join(inside)}" if inside else ""
            raise ReportInputError(f"{path}: not a training run ({METRICS_FILE}), an eval output ({EVAL_FILE}) "
                                   f"or a label output ({LABEL_FILE}){hint}")
    return evals, runs, labels


def read_json(path: Path) -> dict:
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportInputError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(value, dict):
        raise ReportInputError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def write_report(path, *, eval_results: dict | None, run_dirs: list[Path], label_reports: list[Path]) -> Path:
    """Write report.html to `path` and return it.

    eval_results: the eval.json dict (DESIGN.md: "policies", the reference first as "reference");
    run_dirs: training output directories (their metrics.jsonl and config.yaml);
    label_reports: label_report.json files (or the directories holding them).
    """
    policies = _check_eval(eval_results) if eval_results is not None else []
    runs = _unique_names([_read_run(Path(d)) for d in run_dirs])
    labels = [(_label_name(Path(p)), read_json(_label_file(Path(p)))) for p in label_reports]
    if not (policies or runs or labels):
        raise ReportInputError("nothing to report: no eval results, training runs or label reports given")

    sections = {}
    if policies:
        sections["verdict"] = _verdict_section(policies, runs, eval_results)
        sections["frontier"] = _frontier_section(policies)
        sections["samples"] = _samples_section(policies)
        sections["eval-table"] = (_table_section(policies, eval_results.get("settings") or {})
                                  + _agreement_note(eval_results.get("proxy_agreement")))
    if runs:
        sections["training"] = _training_section(runs)
    if labels:
        sections["labels"] = _labels_section(labels)
    sources = ([f"eval: {len(policies)} policies"] if policies else []) + [f"run: {r.name}" for r in runs] + \
              [f"labels: {name}" for name, _ in labels]
    page = _page(sections, sources)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


# ---------------------------------------------------------------- reading inputs

@dataclass
class _Policy:
    name: str
    method: str
    group: str  # points of one group (one run's checkpoints, then its final) are joined by a line in the frontier
    raw: dict
    flagged: bool
    flag_note: str

    @property
    def kind(self) -> str:
        """"reference", "checkpoint" (`RUN@step-N`), "bon" (`bon:N`) or "final" (a run's final or any other model)."""
        if self.name == "reference":
            return "reference"
        if BON_NAME.match(self.name):
            return "bon"
        return "checkpoint" if CHECKPOINT_NAME.match(self.name) else "final"


def _check_eval(results: dict) -> list[_Policy]:
    raw = results.get("policies")
    if not isinstance(raw, list) or not raw:
        raise ReportInputError("eval results: 'policies' must be a non-empty list")
    policies = []
    for i, p in enumerate(raw):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise ReportInputError(f"eval results: policies[{i}] must be an object with a string 'name'")
        for key in ("scores", "win_rate"):
            if not isinstance(p.get(key) or {}, dict):
                raise ReportInputError(f"eval results: policies[{i}] ({p['name']}): '{key}' must be an object")
        method, group = _method_of(p)
        flagged, note = _overoptimisation(p.get("overoptimisation", p.get("overoptimization")))
        policies.append(_Policy(p["name"], method, group, p, flagged, note))
    return policies


def _method_of(policy: dict) -> tuple[str, str]:
    """(method, group): a policy's own "method" field, else the recipe of the run it came from
    (config.yaml in its model directory or up to two levels above: run/, run/final, run/checkpoints/step-N),
    else its name. The group is the run directory, else the run's name (`RUN` of `RUN@step-N`, as
    eval names a run's points, so a report rebuilt away from the runs still joins them), and
    `plots.BON_GROUP` for the best-of-N points."""
    if policy["name"] == "reference":
        return "reference", "reference"
    if BON_NAME.match(policy["name"]):
        return policy.get("method") or plots.BON_GROUP, plots.BON_GROUP
    model = policy.get("model")
    if isinstance(model, str) and model:
        path = Path(model)
        for run in (path, path.parent, path.parent.parent):
            if (run / "config.yaml").is_file():
                recipe = _recipe_label(_read_yaml(run / "config.yaml"))
                return policy.get("method") or recipe, str(run)
    checkpoint = CHECKPOINT_NAME.match(policy["name"])
    run = checkpoint["run"] if checkpoint else policy["name"]
    return policy.get("method") or run, run


def _recipe_label(config: dict) -> str:
    """Which recipe wrote a run's config.yaml, from the keys only that recipe has."""
    if not isinstance(config, dict):
        return "run"
    if "critic" in config or "lam" in config:
        return "ppo"
    if "estimator" in config:
        return {"grpo": "grpo", "rloo": "rloo", "reinforce_pp": "reinforce++"}.get(config["estimator"], "grpo")
    loss = config.get("loss_type")
    variant = "" if loss in (None, "sigmoid") else f" ({loss})"
    if "num_generations" in config and loss:
        return "online-dpo" + variant
    if "desirable_weight" in config:
        return "kto"
    if loss:
        return "dpo" + variant
    if "center_coef" in config:
        return "reward model"
    return "sft"


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _overoptimisation(value: dict | None) -> tuple[bool, str]:
    """(flagged, why) from the mark `rlhf eval` writes: None, or {"flagged", "proxy_delta", "gold_delta",
    "vs", "gold"}, the moves since the previous point of the same curve."""
    if not value:
        return False, ""
    proxy, gold = finite_or_none(value.get("proxy_delta")), finite_or_none(value.get("gold_delta"))
    if proxy is None or gold is None:
        return bool(value.get("flagged")), ""
    since = f" since {value['vs']}" if value.get("vs") else ""
    return bool(value.get("flagged")), f"proxy {proxy:+.3f}, {value.get('gold') or 'gold'} {gold:+.3f}{since}"


@dataclass
class _Run:
    name: str
    path: Path
    method: str
    rows: list[dict]
    has_final: bool
    config: Any = None  # config.yaml, parsed (None without one)


def _read_run(path: Path) -> _Run:
    metrics = path / METRICS_FILE
    if not metrics.is_file():
        raise ReportInputError(f"{path}: not a training run (no {METRICS_FILE})")
    lines = metrics.read_text().splitlines()
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # a run killed mid-write leaves a torn last line
                continue
            raise ReportInputError(f"{metrics}:{n}: not a JSON object") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
            raise ReportInputError(f"{metrics}:{n}: expected a JSON object with a numeric 'step'")
        rows.append(row)
    config = _read_yaml(path / "config.yaml") if (path / "config.yaml").is_file() else None
    name = path.resolve().name if path.name in ("", ".") else path.name
    return _Run(name, path, _recipe_label(config) if config else "run", rows, (path / "final").is_dir(), config)


def _unique_names(runs: list[_Run]) -> list[_Run]:
    """Runs of the same directory name (a/dpo, b/dpo) are told apart by their parent's name."""
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.name}"
    return runs


def _label_file(path: Path) -> Path:
    return path / LABEL_FILE if path.is_dir() else path


def _label_name(path: Path) -> str:
    return (path if path.is_dir() else path.parent).resolve().name


# ---------------------------------------------------------------- numbers

def _mean_se(value: Any) -> tuple[float | None, float | None]:
    """{"mean", "se"} or a bare number -> (mean, se)."""
    if isinstance(value, dict):
        return finite_or_none(value.get("mean")), finite_or_none(value.get("se"))
    return finite_or_none(value), None


def _fmt(value: Any, digits: int = 3) -> str:
    x = finite_or_none(value)
    if x is None:
        return "—"
    if round(x, digits) == 0:
        x = 0.0  # no "-0.000"
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.{digits}f}"


def _fmt_mean_se(value: Any) -> str:
    mean, se = _mean_se(value)
    if mean is None:
        return "—"
    return _fmt(mean) + (f" ± {_fmt(se)}" if se is not None else "")


def _scorers(policies: list[_Policy]) -> list[str]:
    return list(dict.fromkeys(s for p in policies for s in (p.raw.get("scores") or {})))


def _gold(scorers: list[str]) -> str | None:
    return "gold" if "gold" in scorers else (scorers[0] if scorers else None)


def _colours(names: list[str]) -> dict[str, str]:
    return {name: plots.PALETTE[i % len(plots.PALETTE)] for i, name in enumerate(dict.fromkeys(names))}


def _group_colours(policies: list[_Policy]) -> dict[str, str]:
    """One colour per curve (a run, or a lone model); best-of-N grey, the reference black."""
    colours = _colours([p.group for p in policies if p.kind in ("final", "checkpoint")])
    return {**colours, plots.BON_GROUP: plots.BON_COLOUR, "reference": plots.REFERENCE_COLOUR}


def _group_labels(policies: list[_Policy]) -> dict[str, str]:
    """A legend name per group: the run's name (its final's, else `RUN` of its checkpoints) with its method."""
    labels = {}
    for group in dict.fromkeys(p.group for p in policies if p.kind in ("final", "checkpoint")):
        mine = [p for p in policies if p.group == group]
        finals = [p.name for p in mine if p.kind == "final"]
        base = finals[0] if finals else CHECKPOINT_NAME.match(mine[0].name)["run"]
        labels[group] = base if base == mine[0].method else f"{base} ({mine[0].method})"
    return labels


def _curve_order(policies: list[_Policy]) -> list[_Policy]:
    """The points of one curve in training order: checkpoints by step, then the rest as eval.json lists
    them; best-of-N by N."""
    def key(p: _Policy):
        if p.kind == "checkpoint":
            return (0, int(CHECKPOINT_NAME.match(p.name)["step"]))
        if p.kind == "bon":
            return (1, int(BON_NAME.match(p.name)["n"]))
        return (2, 0)
    return sorted(policies, key=key)  # stable: finals keep eval.json's order


# ---------------------------------------------------------------- sections

def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _verdict_section(policies: list[_Policy], runs: list[_Run], results: dict) -> str:
    """Each policy against the reference on the gold scorer, and where it did not win, why."""
    gold = _gold(_scorers(policies))
    if gold is None:
        return "<p class='note'>No scorer results in the eval output, so no policy can be judged.</p>"
    items, steps = [], []
    for p, v in _judge_policies(policies, runs, results):
        css, sign = {"better": ("better", "✓ "), "worse": ("worse", "✗ ")}.get(v.outcome, ("same", ""))
        why = "".join(f"<li>{html.escape(reason)}</li>" for reason in v.reasons)
        warn = "".join(f"<li>⚠ {html.escape(w)}</li>" for w in v.warnings)
        (steps if p.kind == "checkpoint" else items).append(
            f"<li><b>{html.escape(p.name)}</b> ({html.escape(p.method)}): "
            f"<span class='verdict {css}'>{sign}{v.headline}</span>: {html.escape(v.summary)}."
            + (f"<ul class='warnings'>{warn}</ul>" if warn else "")
            + (f"<ul class='why'>{why}</ul>" if why else "") + "</li>")
    # a run's checkpoints are points on its frontier curve: their verdicts are there, folded away
    folded = (f"<details><summary>The {len(steps)} checkpoints, judged the same way</summary>"
              f"<ul class='verdicts'>{''.join(steps)}</ul></details>" if steps else "")
    note = (f"<p class='note'>A policy beats the reference when the 95% interval of its {html.escape(gold)} win rate "
            "lies above 0.5. Where it does not, the causes below are read off the eval and the training run's "
            f"metrics. ⚠ marks a policy whose distinct-2 fell under {verdict.COLLAPSE_DISTINCT:.0%} of the "
            f"reference's (collapsed) or whose mean length moved more than {verdict.LENGTH_DRIFT:.0%} from it "
            "(drifted), whatever its score.</p>")
    return f"<ul class='verdicts'>{''.join(items)}</ul>{folded}{note}"


def verdicts(eval_results: dict, run_dirs: list[Path]) -> list[verdict.Verdict]:
    """`rlhf.eval.verdict.judge` for every policy of an eval.json dict but the reference, each with
    its training run among `run_dirs` (matched by the run its model came from), as the report shows."""
    policies = _check_eval(eval_results)
    if _gold(_scorers(policies)) is None:
        return []
    runs = [_read_run(Path(d)) for d in run_dirs]
    return [v for _, v in _judge_policies(policies, runs, eval_results)]


def _judge_policies(policies: list[_Policy], runs: list[_Run], results: dict) -> list[tuple[_Policy, verdict.Verdict]]:
    scorers = _scorers(policies)
    gold = _gold(scorers)
    proxy = "proxy" if "proxy" in scorers and gold != "proxy" else None
    proxy_spec = ((results.get("settings") or {}).get("scorers") or {}).get(proxy) if proxy else None
    agreement = results.get("proxy_agreement") if isinstance(results.get("proxy_agreement"), dict) else {}
    proxy_agreement = finite_or_none(agreement.get("agreement")) if agreement.get("gold") == gold else None
    by_path = {r.path.resolve(): r for r in runs}
    reference = next((p.raw for p in policies if p.name == "reference"), None)
    judged = []
    for p in policies:
        if p.name == "reference":
            continue
        run = by_path.get(Path(p.group).resolve())  # the policy's run directory, when it was given
        config = run.config if run else _read_yaml(Path(p.group) / "config.yaml")  # None if p.group is no run
        trained_on = config.get("reward") if isinstance(config, dict) else None
        judged.append((p, verdict.judge(p.raw, gold, proxy=proxy, trained_on_proxy=_same_spec(trained_on, proxy_spec),
                                        proxy_agreement=proxy_agreement, run_rows=run.rows if run else None,
                                        reference=reference)))
    return judged


def _same_spec(a: Any, b: Any) -> bool:
    """Two reward specs name the same scorer: equal strings, or paths to the same file or directory."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def _frontier_section(policies: list[_Policy]) -> str:
    scorers = _scorers(policies)
    gold = _gold(scorers)
    if gold is None:
        return "<p class='note'>No scorer results in the eval output, so there is no frontier to draw.</p>"
    panels = [gold] + (["proxy"] if "proxy" in scorers and gold != "proxy" else [])
    reference = next((p for p in policies if p.name == "reference"), None)
    ref_scores = {}
    if reference is not None:
        for s in panels:
            mean, se = _mean_se((reference.raw.get("scores") or {}).get(s))
            if mean is not None:
                ref_scores[s] = (mean, se)
    points, no_kl = [], []
    for group in dict.fromkeys(p.group for p in policies if p is not reference):
        curve = _curve_order([p for p in policies if p.group == group and p is not reference])
        for p in curve:
            kl, kl_se = _mean_se(p.raw.get("kl"))
            if kl is None:
                no_kl.append(p.name)
                continue
            analytic = p.kind == "bon" or (isinstance(p.raw.get("kl"), dict) and bool(p.raw["kl"].get("analytic")))
            scores = {}
            for s in panels:
                mean, se = _mean_se((p.raw.get("scores") or {}).get(s))
                if mean is not None:
                    scores[s] = (mean, se)
            points.append(plots.FrontierPoint(p.name, p.method, kl, None if analytic else kl_se, scores, p.flagged,
                                              p.group, _point_label(p, len(curve))))
    if not points and not ref_scores:
        return "<p class='note'>No policy has both a KL and a score, so there is no frontier to draw.</p>"
    png = plots.frontier_png(points, ref_scores, panels, _group_colours(policies), _group_labels(policies))
    what = (f"<b>{html.escape(gold)}</b> score against the KL divergence from the reference, per completion "
            "(nats). Higher at the same KL is better; the reference is the star at KL 0. One line per run: its "
            "checkpoints in training order, then its final model. Error bars: 95% intervals (± 1.96 SE).")
    if any(p.group == plots.BON_GROUP for p in points):
        what += (" <b>Best-of-N</b> (grey diamonds): the reference's best of N samples by the proxy, at the analytic "
                 "KL log N − (N−1)/N, so without an x error bar: the baseline a trained policy should beat.")
    if len(panels) > 1:
        what += (" The <b>proxy</b> panel beside it holds the same points scored by the reward that was optimised: "
                 "where the proxy keeps rising while gold stays flat or falls, the policy is gaming the proxy "
                 "(over-optimisation; flagged points ringed in red).")
    missing = f"<p class='note'>Not drawn (no KL): {html.escape(', '.join(no_kl))}.</p>" if no_kl else ""
    return f"<p>{what}</p>\n{_img(png, f'{gold} score vs KL')}\n{missing}"


def _point_label(p: _Policy, curve_size: int) -> str:
    """The annotation beside a frontier point: its step, "final", or N; none for a lone point (the legend names it)."""
    if p.kind == "checkpoint":
        return f"step {CHECKPOINT_NAME.match(p.name)['step']}"
    if p.kind == "bon":
        return f"N={BON_NAME.match(p.name)['n']}"
    return "final" if curve_size > 1 else ""


def _table_section(policies: list[_Policy], settings: dict) -> str:
    scorers = _scorers(policies)
    colours = _group_colours(policies)
    has = {key: any(key in p.raw for p in policies)
           for key in ("length", "truncated", "distinct_1", "distinct_2")}
    head = ["policy", "method"] + [h for s in scorers for h in (f"{s} score", f"{s} win rate")] + ["KL(π‖ref)"]
    head += [h for key, h in (("length", "length"), ("truncated", "truncated"), ("distinct_1", "distinct-1"),
                              ("distinct_2", "distinct-2")) if has[key]]
    rows = []
    reference = next((p.raw for p in policies if p.kind == "reference"), {})
    for p in policies:
        r = p.raw
        drift = _mean_se(r.get("length"))[0], _mean_se(reference.get("length"))[0]
        drifted = p.kind != "reference" and verdict.length_drift_warning(*drift) is not None
        collapsed = p.kind != "reference" and verdict.collapse_warning(r.get("distinct_2"), reference.get("distinct_2"))
        badge = f" <span class='flag' title='over-optimised {html.escape(p.flag_note)}'>⚠</span>" if p.flagged else ""
        cells = [f"<th scope='row'>{html.escape(p.name)}{badge}</th>",
                 f"<td>{_swatch(colours.get(p.group))}{html.escape(p.method)}</td>"]
        for s in scorers:
            score = (r.get("scores") or {}).get(s)
            none = score.get("n_none") if isinstance(score, dict) else None
            extra = f" <span class='none' title='samples the scorer returned None for'>({int(none)} none)</span>" \
                if finite_or_none(none) else ""
            cells.append(f"<td class='num'>{_fmt_mean_se(score)}{extra}</td>")
            cells.append("<td class='num'>—</td>" if p.name == "reference" else _win_cell((r.get("win_rate") or {}).get(s)))
        cells.append(f"<td class='num'>{_fmt_mean_se(r.get('kl'))}</td>")
        if has["length"]:
            cells.append(f"<td class='num{' worse' if drifted else ''}'>{_fmt(_mean_se(r.get('length'))[0], 1)}</td>")
        if has["truncated"]:
            truncated = _mean_se(r.get("truncated"))[0]
            cells.append(f"<td class='num'>{'—' if truncated is None else f'{100 * truncated:.1f}%'}</td>")
        for key in ("distinct_1", "distinct_2"):
            if has[key]:
                worse = " worse" if key == "distinct_2" and collapsed else ""
                cells.append(f"<td class='num{worse}'>{_fmt(_mean_se(r.get(key))[0])}</td>")
        rows.append(f"<tr{' class=flagged' if p.flagged else ''}>{''.join(cells)}</tr>")
    flagged = [f"<b>{html.escape(p.name)}</b>" + (f" ({html.escape(p.flag_note)})" if p.flag_note else "")
               for p in policies if p.flagged]
    alert = (f"<p class='alert'>⚠ Over-optimisation, the proxy reward rising while the gold score falls "
             f"(Gao et al. 2022): {'; '.join(flagged)}. Their rows are highlighted.</p>" if flagged else "")
    table = ("<div class='scroll'><table class='numbers eval'><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
             + "</tr></thead><tbody>" + "\n".join(rows) + "</tbody></table></div>")
    legend = ("<p class='note'>Score: mean ± standard error over samples (a scorer's None answers are counted, "
              "never averaged in). Win rate: against the reference's completion on the same prompt (ties count "
              "half), with its 95% interval; green when the whole interval is above 0.5, red when below. "
              "KL: mean over completions of Σ log π − log π_ref on the policy's own samples, ± SE. "
              "Length: mean completion tokens; truncated: share that hit the token limit. Red length or "
              "distinct-2: drifted or collapsed (see the verdicts).</p>")
    return alert + table + legend + _settings_block(settings)


def _agreement_note(agreement: Any) -> str:
    """eval.json's proxy_agreement as one sentence (nothing when absent)."""
    rate = finite_or_none(agreement.get("agreement")) if isinstance(agreement, dict) else None
    if rate is None:
        return ""
    gold = html.escape(str(agreement.get("gold") or "gold"))
    return (f"<p class='note'>Proxy agreement: the proxy orders <b>{rate:.1%}</b> of the "
            f"{int(finite_or_none(agreement.get('pairs')) or 0):,} pairs of samples (all policies) whose {gold} "
            f"scores differ as {gold} does (0.5: it knows nothing of {gold}'s order).</p>")


def _swatch(colour: str | None) -> str:
    return f"<span class='swatch' style='background:{colour}'></span>" if colour else ""


def _win_cell(win: Any) -> str:
    if not isinstance(win, dict) or finite_or_none(win.get("rate")) is None:
        return "<td class='num'>—</td>"
    rate, low, high = finite_or_none(win.get("rate")), finite_or_none(win.get("low")), finite_or_none(win.get("high"))
    css = "better" if low is not None and low > 0.5 else "worse" if high is not None and high < 0.5 else ""
    interval = f" [{_fmt(low, 2)}, {_fmt(high, 2)}]" if low is not None and high is not None else ""
    return f"<td class='num {css}'>{_fmt(rate, 2)}{interval}</td>"


def _settings_block(settings: dict) -> str:
    if not settings:
        return ""
    rows = "".join(f"<tr><th scope='row'>{html.escape(str(k))}</th><td><code>{html.escape(_plain(v))}</code></td></tr>"
                   for k, v in settings.items())
    return f"<details><summary>Eval settings</summary><table class='kv'>{rows}</table></details>"


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _text(value: Any) -> str:
    """A prompt or completion as plain text: a string, or chat messages as 'role: content' lines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        return "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in value)
    return _plain(value)


def _side_by_side(policies: list[_Policy], n_prompts: int = SAMPLE_PROMPTS
                  ) -> tuple[list[_Policy], list[tuple[Any, list[dict | None]]], int]:
    """(columns, rows, prompts in the eval): the reference and each final model (no checkpoints, no
    best-of-N), and for the first `n_prompts` prompts (the prompt, each column's sample or None).

    A policy's sample is the one of the same prompt and the same sample index as the reference's
    (eval draws sample g of prompt i with the same seed for every policy: common random numbers),
    matched by `prompt_index` / `sample_index`, or, in an eval.json without them, by the prompt's
    text and its order among that prompt's samples."""
    columns = [p for p in policies if p.kind in ("reference", "final")]
    keyed = []
    for p in columns:
        seen: dict[Any, int] = {}
        mine = {}
        for sample in p.raw.get("samples") or []:
            if not isinstance(sample, dict) or "prompt" not in sample:
                continue
            prompt = ("index", sample["prompt_index"]) if isinstance(sample.get("prompt_index"), int) \
                else ("text", _plain(sample["prompt"]))
            occurrence = seen[prompt] = seen.get(prompt, -1) + 1
            index = sample["sample_index"] if isinstance(sample.get("sample_index"), int) else occurrence
            mine.setdefault((prompt, index), sample)
        keyed.append(mine)
    lead = next((mine for mine in keyed if mine), {})  # the reference's, when it has samples
    first_of: dict[Any, tuple] = {}
    for prompt, index in lead:  # in the order eval drew them, prompt by prompt
        first_of.setdefault(prompt, (prompt, index))
    firsts = list(first_of.values())
    rows = [(lead[key]["prompt"], [mine.get(key) for mine in keyed]) for key in firsts[:n_prompts]]
    return columns, rows, len(firsts)


def _samples_section(policies: list[_Policy]) -> str:
    """The reference's completion beside each final model's, for the same prompt and seed, with gold scores."""
    columns, rows, total = _side_by_side(policies)
    if not rows:
        return "<p class='note'>The eval output holds no samples.</p>"
    gold = _gold(_scorers(policies))
    colours = _group_colours(policies)
    head = "".join(f"<th>{_swatch(colours.get(p.group))}{html.escape(p.name)}"
                   + ("" if p.method in (p.name, "reference") else f" <span class='none'>({html.escape(p.method)})</span>")
                   + "</th>" for p in columns)
    body = []
    for n, (prompt, samples) in enumerate(rows, start=1):
        ref_score = _sample_score(samples[0], gold) if columns[0].kind == "reference" else None
        cells = []
        for p, sample in zip(columns, samples):
            if sample is None:
                cells.append("<td class='none'>no sample</td>")
                continue
            score = _sample_score(sample, gold)
            delta, css = "", ""
            if p.kind != "reference" and score is not None and ref_score is not None:
                delta = f" ({score - ref_score:+.3f})"
                css = " better" if score > ref_score else " worse" if score < ref_score else ""
            shown = "—" if score is None else _fmt(score)
            cls = " class='reference'" if p.kind == "reference" else ""
            cells.append(f"<td{cls}>"
                         f"<pre>{html.escape(_text(sample.get('completion', '')))}</pre>"
                         f"<div class='score{css}'>{html.escape(gold or 'score')} {shown}{delta}</div></td>")
        body.append(f"<tr class='prompt-row'><td colspan='{len(columns)}'><span class='label'>Prompt {n}</span>"
                    f"<pre>{html.escape(_text(prompt))}</pre></td></tr><tr class='completions'>{''.join(cells)}</tr>")
    table = (f"<div class='scroll'><table class='side' style='min-width:{240 * len(columns)}px'>"
             f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>")
    note = (f"<p class='note'>The first {len(rows)} of {total} prompts. Each column is one model's first sample for "
            "the prompt, drawn with the same seed as the reference's; the score is "
            f"{html.escape(gold or 'none')}, with the change from the reference's (green: higher). Checkpoints and "
            "best-of-N points are in the table below.</p>")
    return table + note


def _sample_score(sample: dict | None, scorer: str | None) -> float | None:
    scores = (sample or {}).get("scores")
    return finite_or_none(scores.get(scorer)) if isinstance(scores, dict) and scorer else None


def summary_text(eval_results: dict, *, example_chars: int = EXAMPLE_CHARS) -> str:
    """The end of `rlhf demo`'s printout, as the report opens: a short table (the reference, each final
    model and best-of-N point: gold ± SE, gold win rate with its 95% interval, KL, length, distinct-2),
    the collapse / length-drift warnings, and one example prompt with the reference's completion and each
    final model's (same prompt, same seed), each cut to `example_chars` characters, with gold scores."""
    policies = _check_eval(eval_results)
    gold = _gold(_scorers(policies))
    shown = [p for p in policies if p.kind != "checkpoint"]
    fmt = lambda x, d=3: "-" if x is None else f"{x:.{d}f}"  # noqa: E731
    header = ["policy", "method", f"{gold or 'score'} ± se", "win rate [95%]", "KL", "length", "distinct-2"]
    rows = []
    for p in shown:
        r = p.raw
        mean, se = _mean_se((r.get("scores") or {}).get(gold)) if gold else (None, None)
        win = ((r.get("win_rate") or {}).get(gold) or {}) if gold and p.kind != "reference" else {}
        rate, low, high = (finite_or_none(win.get(k)) for k in ("rate", "low", "high"))
        kl, kl_se = _mean_se(r.get("kl"))
        analytic = p.kind == "bon" or (isinstance(r.get("kl"), dict) and bool(r["kl"].get("analytic")))
        rows.append([p.name, p.method, fmt(mean) + (f" ± {fmt(se)}" if se is not None else ""),
                     "-" if rate is None else f"{fmt(rate, 2)} [{fmt(low, 2)}, {fmt(high, 2)}]",
                     fmt(kl, 2) + (" (analytic)" if analytic and kl is not None else ""),
                     fmt(_mean_se(r.get("length"))[0], 1), fmt(finite_or_none(r.get("distinct_2")), 2)])
    widths = [max(len(row[c]) for row in [header] + rows) for c in range(len(header))]
    line = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()  # noqa: E731
    out = [line(header), line(["-" * w for w in widths])] + [line(row) for row in rows]
    checkpoints = sum(p.kind == "checkpoint" for p in policies)
    if checkpoints:
        out.append(f"({checkpoints} checkpoints left out here: they are points on the report's frontier)")
    reference = next((p.raw for p in policies if p.kind == "reference"), None)
    if reference is not None:
        for p in shown:
            for warning in verdict.drift_warnings(p.raw, reference) if p.kind != "reference" else []:
                out.append(f"warning: {p.name}: {warning}")
    columns, rows_, _ = _side_by_side(policies, 1)
    if rows_:
        prompt, samples = rows_[0]
        ref_score = _sample_score(samples[0], gold) if columns[0].kind == "reference" else None
        out += ["", "one example (the same prompt and seed for every model):",
                f"  prompt: {_cut(_text(prompt), example_chars)}"]
        for p, sample in zip(columns, samples):
            if sample is None:
                continue
            score = _sample_score(sample, gold)
            tag = f"{gold} {fmt(score)}" if gold else ""
            if p.kind != "reference" and score is not None and ref_score is not None:
                tag += f", {score - ref_score:+.3f} vs reference"
            out.append(f"  {p.name} [{tag}]: {_cut(_text(sample.get('completion', '')), example_chars)}")
    return "\n".join(out)


def _cut(text: str, limit: int) -> str:
    """`text` on one line (whitespace runs as one space), cut to `limit` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 1].rstrip() + "…"


def _training_section(runs: list[_Run]) -> str:
    metrics = [m for m in TRAINING_METRICS if any(finite_or_none(row.get(m)) is not None for r in runs for row in r.rows)]
    colours = _colours([r.name for r in runs])
    summary = []
    for r in runs:
        last = r.rows[-1] if r.rows else {}
        cells = [f"<th scope='row'>{_swatch(colours[r.name])}{html.escape(r.name)}</th>",
                 f"<td>{html.escape(r.method)}</td>",
                 f"<td class='num'>{int(last.get('step', 0))}</td>"]
        cells += [f"<td class='num'>{_fmt(last.get(m))}</td>" for m in metrics]
        cells.append(f"<td>{'yes' if r.has_final else 'no'}</td>")
        summary.append(f"<tr>{''.join(cells)}</tr>")
    head = ["run", "recipe", "steps"] + [f"last {m}" for m in metrics] + ["final/"]
    table = ("<table class='numbers'><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) +
             "</tr></thead><tbody>" + "".join(summary) + "</tbody></table>")
    if not metrics:
        return table + "<p class='note'>The runs logged none of " + ", ".join(TRAINING_METRICS) + ".</p>"
    curves = [plots.RunCurves(r.name, {m: [(row["step"], finite_or_none(row.get(m))) for row in r.rows
                                           if finite_or_none(row.get(m)) is not None] for m in metrics}) for r in runs]
    png = plots.training_curves_png(curves, metrics, colours)
    return (f"<p>Per optimiser step, from each run's <code>{METRICS_FILE}</code>; long runs are smoothed "
            "(exponential moving average) over the raw values drawn faint.</p>"
            f"{_img(png, 'training curves')}\n{table}")


LABEL_ROWS = [  # (key in label_report.json, row label, format), in the order shown
    ("judge", "judge", "str"),
    ("judge_kind", "judge kind", "str"),
    ("n_prompts", "prompts", "int"),
    ("n_judged", "pairs judged", "int"),
    ("n_unparsed", "unparseable verdicts", "int"),
    ("n_pairs", "pairs labelled", "int"),
    ("n_dropped", "pairs dropped (under min_confidence, or a tie)", "int"),
    ("dropped_share", "share dropped", "pct"),
    ("tie_rate", "tie rate (the judge barely prefers either)", "pct"),
    ("mean_confidence", "mean confidence", "num"),
    ("position_consistency", "position consistency (same winner in both orders)", "pct"),
    ("agreement", "agreement with gold", "pct"),
    ("baseline_longer", "baseline: always the longer answer", "pct"),
    ("baseline_first", "baseline: always the first answer", "pct"),
    ("agreement_labelled", "agreement with gold, labelled pairs only", "pct"),
    ("n_gold_pairs", "pairs with a gold winner", "int"),
    ("items_per_s", "pairs judged per second", "num"),
]


def _label_cell(report: dict, key: str, how: str) -> str:
    value = report.get(key)
    if how == "str":
        return "—" if value is None else html.escape(str(value))
    v = finite_or_none(value)
    if v is None:
        return "—"
    if how == "int":
        return f"{int(v)}"
    if how == "num":
        return _fmt(v)
    se = finite_or_none(report.get(f"{key}_se"))
    return f"{100 * v:.1f}%" + (f" ± {100 * se:.1f}" if se is not None else "")


def _labels_section(labels: list[tuple[str, dict]]) -> str:
    known = {key for key, _, _ in LABEL_ROWS} | {f"{key}_se" for key, _, _ in LABEL_ROWS}
    rows = [(key, label, how) for key, label, how in LABEL_ROWS if any(key in r for _, r in labels)]
    head = "<tr><th>label output</th>" + "".join(f"<th>{html.escape(name)}</th>" for name, _ in labels) + "</tr>"
    body = [f"<tr><th scope='row'>{html.escape(label)}</th>"
            + "".join(f"<td class='num'>{_label_cell(r, key, how)}</td>" for _, r in labels) + "</tr>"
            for key, label, how in rows]
    table = f"<table class='numbers'><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
    # everything else the labeller recorded (settings, cache counts), folded away
    others = list(dict.fromkeys(k for _, r in labels for k, v in r.items()
                                if k not in known and isinstance(v, (str, bool, numbers.Real))))
    if others:
        cells = "".join(f"<tr><th scope='row'><code>{html.escape(k)}</code></th>"
                        + "".join(f"<td>{html.escape(_plain(r.get(k, '—')))}</td>" for _, r in labels) + "</tr>"
                        for k in others)
        table += f"<details><summary>All recorded fields</summary><table class='kv'>{cells}</table></details>"
    bars = [(name, {k: v for k in ("agreement", "baseline_longer", "baseline_first", "position_consistency")
                    if (v := finite_or_none(r.get(k))) is not None}) for name, r in labels]
    chart = ""
    if any("agreement" in values for _, values in bars):
        chart = _img(plots.label_quality_png(bars), "label agreement vs baselines")
    what = ("<p>How far the AI labeller can be trusted: a judge is useful only when its agreement with gold beats "
            "both baselines, and a judge that picks the same winner whichever order the answers come in "
            "(position consistency) is not merely favouring a position.</p>")
    return what + chart + table


# ---------------------------------------------------------------- the page

STYLE = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #dde1e8; --bg-alt: #f6f7f9; --flag: #fdecea; --flag-fg: #a61b1b; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg);
       margin: 0; background: #fff; }
header { padding: 24px 32px 12px; border-bottom: 1px solid var(--line); }
header h1 { margin: 0 0 4px; font-size: 24px; }
header .meta { color: var(--muted); font-size: 13px; }
nav { margin-top: 10px; display: flex; gap: 16px; flex-wrap: wrap; font-size: 14px; }
nav a { color: #1f5fbf; text-decoration: none; }
main { max-width: 1400px; padding: 8px 32px 48px; }
section { margin-top: 28px; }
h2 { font-size: 19px; border-bottom: 2px solid var(--fg); padding-bottom: 4px; margin-bottom: 10px; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
p.note { color: var(--muted); font-size: 13px; }
p.alert { background: var(--flag); color: var(--flag-fg); padding: 8px 12px; border-radius: 4px; font-weight: 600; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13.5px; margin: 8px 0; }
th, td { padding: 4px 9px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: var(--bg-alt); font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fbfbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.better, .verdict.better { color: #16701f; font-weight: 600; }
.verdict.worse { color: #a61b1b; font-weight: 600; }
.verdict.same { color: var(--muted); font-weight: 600; }
ul.verdicts > li { margin-bottom: 6px; }
ul.why { color: var(--muted); margin: 2px 0 0; }
td.worse { color: #a61b1b; font-weight: 600; }
tr.flagged, tr.flagged:nth-child(even) { background: var(--flag); }
.flag { color: var(--flag-fg); font-weight: 600; }
table.eval tbody th { white-space: nowrap; }
.none { color: var(--muted); font-size: 12px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
table.kv td, table.kv th { font-size: 12.5px; }
details { margin-top: 8px; }
summary { cursor: pointer; color: var(--muted); }
.prompt { margin-top: 18px; }
.prompt .label { font-size: 12px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); }
pre { white-space: pre-wrap; word-break: break-word; margin: 4px 0; font: 13px/1.45 ui-monospace, Menlo, Consolas, monospace; }
.prompt > pre { background: var(--bg-alt); padding: 8px 10px; border-radius: 4px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 10px; margin-top: 8px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.card pre { max-height: 14em; overflow-y: auto; }
.card.reference { border-color: #8a93a3; background: var(--bg-alt); }
.card.flagged { border-color: var(--flag-fg); }
.card .who { font-weight: 600; font-size: 13px; display: flex; justify-content: space-between; gap: 8px; flex-wrap: wrap; }
.card .scores { font-weight: 400; color: var(--muted); font-variant-numeric: tabular-nums; }
ul.warnings { color: var(--flag-fg); font-weight: 600; margin: 2px 0 0; list-style: none; padding-left: 22px; }
table.side { table-layout: fixed; width: 100%; }
table.side thead th { white-space: normal; }
table.side tr.prompt-row td { background: var(--bg-alt); border-top: 2px solid var(--line); }
table.side tr.prompt-row .label { font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); }
table.side tr.completions td { border-right: 1px solid var(--line); }
table.side tr.completions td:last-child { border-right: 0; }
table.side td.reference { background: #f3f4f7; }
table.side td pre { max-height: 12em; overflow-y: auto; }
table.side .score { font-size: 12.5px; color: var(--muted); font-variant-numeric: tabular-nums; }
table.side .score.better { color: #16701f; font-weight: 600; }
table.side .score.worse { color: #a61b1b; font-weight: 600; }
"""


def _page(sections: dict[str, str], sources: list[str]) -> str:
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    nav = "".join(f"<a href='#{sid}'>{html.escape(SECTIONS[sid])}</a>" for sid in SECTIONS if sid in sections)
    body = "\n".join(f"<section id='{sid}'><h2>{html.escape(SECTIONS[sid])}</h2>\n{sections[sid]}\n</section>"
                     for sid in SECTIONS if sid in sections)
    meta = html.escape(" · ".join(sources))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rlhf report</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>rlhf report</h1>
<div class="meta">{stamp} · {meta}</div>
<nav>{nav}</nav>
</header>
<main>
{body}
</main>
</body>
</html>
"""

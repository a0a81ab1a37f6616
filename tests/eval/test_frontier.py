"""The report's opening: the reward-vs-KL frontier (runs' checkpoints as curves, best-of-N at its analytic
KL, the reference at 0), the reference's completion beside each model's on the same prompt and seed,
and the demo's printed summary. Built from small synthetic eval.json dicts, no models."""

import math
import re
import struct
from html.parser import HTMLParser

import pytest

from rlhf.eval import plots, write_report
from rlhf.eval.report import SECTIONS, summary_text

PROMPTS = [f"prompt {i} <&>" for i in range(7)]


def _samples(tag, gold, n_samples=1, shuffle=False):
    """Prompt-major samples as eval writes them; completion text names the policy, prompt and sample index."""
    rows = [{"prompt_index": i, "sample_index": g, "prompt": p, "completion": f"{tag} says {i}.{g} <i>",
             "scores": {"gold": round(gold + 0.01 * i - 0.1 * g, 3), "proxy": 1.0}}
            for i, p in enumerate(PROMPTS) for g in range(n_samples)]
    return rows[::-1] if shuffle else rows


def _policy(name, gold, kl, *, proxy=None, kl_se=0.1, model=None, length=30.0, distinct_2=0.6, samples=None,
            analytic=False, flagged=False):
    scores = {"gold": {"mean": gold, "se": 0.02}}
    if proxy is not None:
        scores["proxy"] = {"mean": proxy, "se": 0.03}
    kl_entry = {"mean": kl, "se": 0.0 if analytic else kl_se}
    if analytic:
        kl_entry["analytic"] = True
    return {"name": name, "model": model or f"/not/here/{name}", "scores": scores, "kl": kl_entry,
            "win_rate": {"gold": {"rate": 0.6, "low": 0.55, "high": 0.65}},
            "length": {"mean": length, "se": 0.4}, "distinct_1": 0.4, "distinct_2": distinct_2,
            "overoptimisation": {"flagged": True, "proxy_delta": 0.5, "gold_delta": -0.1, "vs": "x", "gold": "gold"}
            if flagged else None,
            "samples": samples if samples is not None else _samples(name, gold)}


def _eval(with_proxy=True, n_samples=1):
    proxy = (lambda v: v) if with_proxy else (lambda v: None)
    ref = _policy("reference", 0.1, 0.0, proxy=proxy(0.0), samples=_samples("reference", 0.1, n_samples))
    policies = [ref]
    # checkpoints listed out of order: the curve must still run step 50, 100, 150, then final
    for step, gold, kl in ((100, 0.3, 2.0), (50, 0.2, 1.0), (150, 0.35, 3.0)):
        policies.append(_policy(f"dpo@step-{step}", gold, kl, proxy=proxy(gold * 2), model=f"/x/dpo/checkpoints/step-{step}",
                                samples=_samples(f"dpo-{step}", gold, n_samples)))
    policies.append(_policy("dpo", 0.4, 3.5, proxy=proxy(1.0), model="/x/dpo/final",
                            samples=_samples("dpo", 0.4, n_samples, shuffle=True)))
    policies.append(_policy("ppo", 0.05, 8.0, proxy=proxy(3.0), model="/x/ppo/final", length=48.0, distinct_2=0.41,
                            flagged=with_proxy, samples=_samples("ppo", 0.05, n_samples)))
    for n in (16, 1, 4):
        policies.append(_policy(f"bon:{n}", 0.1 + 0.05 * math.log(n), math.log(n) - (n - 1) / n, proxy=proxy(0.2 * n),
                                analytic=True, samples=_samples(f"bon{n}", 0.2, n_samples)))
    return {"settings": {"seed": 0, "num_samples": n_samples}, "policies": policies}


@pytest.fixture
def captured(monkeypatch):
    """The arguments report.py hands to plots.frontier_png, while the real function still draws."""
    calls = []
    real = plots.frontier_png

    def spy(points, reference, scorers, colours, labels=None):
        calls.append({"points": points, "reference": reference, "scorers": scorers, "colours": colours,
                      "labels": labels})
        return real(points, reference, scorers, colours, labels)
    monkeypatch.setattr(plots, "frontier_png", spy)
    return calls


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_the_frontier_joins_each_runs_checkpoints_in_step_order_and_draws_best_of_n_at_its_analytic_kl(tmp_path,
                                                                                                          captured):
    page = write_report(tmp_path / "r.html", eval_results=_eval(), run_dirs=[], label_reports=[]).read_text()
    (call,) = captured
    assert call["scorers"] == ["gold", "proxy"]
    assert call["reference"] == {"gold": (0.1, 0.02), "proxy": (0.0, 0.03)}  # the reference at (0, its score)
    by_group = {}
    for p in call["points"]:
        by_group.setdefault(p.group, []).append(p)
    assert [p.name for p in by_group["dpo"]] == ["dpo@step-50", "dpo@step-100", "dpo@step-150", "dpo"]
    assert [p.label for p in by_group["dpo"]] == ["step 50", "step 100", "step 150", "final"]
    assert [p.name for p in by_group["best-of-N"]] == ["bon:1", "bon:4", "bon:16"]
    assert [p.kl_se for p in by_group["best-of-N"]] == [None, None, None]  # analytic: no x error bar
    assert by_group["best-of-N"][1].kl == pytest.approx(math.log(4) - 3 / 4)
    assert [p.kl_se for p in by_group["dpo"]] == [0.1] * 4
    assert [p.name for p in by_group["ppo"]] == ["ppo"] and by_group["ppo"][0].label == ""  # a lone point
    assert by_group["ppo"][0].flagged and by_group["ppo"][0].scores == {"gold": (0.05, 0.02), "proxy": (3.0, 0.03)}
    assert len(set(call["colours"][g] for g in ("dpo", "ppo", "best-of-N"))) == 3
    # the frontier is the first figure, right after the verdicts, and the side-by-side follows it
    assert list(SECTIONS)[:3] == ["verdict", "frontier", "samples"]
    assert page.index("id='verdict'") < page.index("id='frontier'") < page.index("<img") < page.index("id='samples'")
    assert "95% intervals (± 1.96 SE)" in page and "Best-of-N" in page and "The <b>proxy</b> panel" in page


def test_frontier_png_without_a_proxy_and_with_a_single_policy(tmp_path, captured):
    write_report(tmp_path / "proxy.html", eval_results=_eval(), run_dirs=[], label_reports=[])
    results = _eval(with_proxy=False)
    page = write_report(tmp_path / "r.html", eval_results=results, run_dirs=[], label_reports=[]).read_text()
    assert captured[-1]["scorers"] == ["gold"] and "The <b>proxy</b> panel" not in page
    one = {"policies": [results["policies"][0], results["policies"][4]]}  # the reference and dpo's final
    write_report(tmp_path / "one.html", eval_results=one, run_dirs=[], label_reports=[])
    (point,) = captured[-1]["points"]
    assert point.name == "dpo" and point.label == "" and captured[-1]["labels"] == {"dpo": "dpo"}
    # and the plot function on its own: one panel, one point, no reference; two panels with a proxy
    single = plots.frontier_png([point], {}, ["gold"], {"dpo": "#1f77b4"})
    double = plots.frontier_png(captured[0]["points"], captured[0]["reference"], ["gold", "proxy"],
                                captured[0]["colours"], captured[0]["labels"])
    width_one, _ = _png_size(single)
    width_two, height = _png_size(double)
    assert width_one > 300 and width_two > 1.6 * width_one and height > 300
    assert len(double) < 400_000  # small enough to embed


def test_frontier_png_is_deterministic(captured, tmp_path):
    write_report(tmp_path / "r.html", eval_results=_eval(), run_dirs=[], label_reports=[])
    args = captured[0]
    first = plots.frontier_png(args["points"], args["reference"], args["scorers"], args["colours"], args["labels"])
    second = plots.frontier_png(args["points"], args["reference"], args["scorers"], args["colours"], args["labels"])
    assert first == second and b"tIME" not in first and b"matplotlib" not in first  # no timestamp, no version


class _SideBySide(HTMLParser):
    """The side-by-side table: column headers, and per prompt its text and each column's (completion, score)."""

    def __init__(self):
        super().__init__()
        self.heads, self.rows, self._in = [], [], None
        self._table = False
        self._text = ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and "side" in (attrs.get("class") or ""):
            self._table = True
        if not self._table:
            return
        if tag == "th":
            self._in, self._text = "th", ""
        elif tag == "tr" and attrs.get("class") == "prompt-row":
            self.rows.append({"prompt": "", "cells": []})
            self._in = "prompt"
        elif tag == "pre" and self._in == "cell":
            self._text = ""
            self._in = "pre"
        elif tag == "td" and self.rows and self._in != "prompt":
            self.rows[-1]["cells"].append(["", ""])
            self._in = "cell"
        elif tag == "div" and attrs.get("class", "").startswith("score"):
            self._in = "score"

    def handle_endtag(self, tag):
        if not self._table:
            return
        if tag == "table":
            self._table = False
        elif tag == "th":
            self.heads.append(self._text.strip())
            self._in = None
        elif tag == "pre" and self._in == "pre":
            self.rows[-1]["cells"][-1][0] = self._text
            self._in = "cell"
        elif tag == "tr":
            self._in = None
        elif tag == "div" and self._in == "score":
            self._in = "cell"

    def handle_data(self, data):
        if self._in == "th":
            self._text += data
        elif self._in == "prompt" and not data.startswith("Prompt "):
            self.rows[-1]["prompt"] += data
        elif self._in == "pre":
            self._text += data
        elif self._in == "score":
            self.rows[-1]["cells"][-1][1] += data


@pytest.mark.parametrize("n_samples", [1, 2])
def test_side_by_side_shows_five_prompts_with_the_references_completion_beside_each_final_model(tmp_path, n_samples):
    page = write_report(tmp_path / "r.html", eval_results=_eval(n_samples=n_samples), run_dirs=[],
                        label_reports=[]).read_text()
    parsed = _SideBySide()
    parsed.feed(page)
    assert parsed.heads == ["reference", "dpo", "ppo"]  # no checkpoints, no best-of-N
    assert [r["prompt"] for r in parsed.rows] == PROMPTS[:5]
    for i, row in enumerate(parsed.rows):
        completions = [c[0] for c in row["cells"]]
        # the same prompt and sample index for everyone, though dpo's samples are stored in reverse order
        assert completions == [f"reference says {i}.0 <i>", f"dpo says {i}.0 <i>", f"ppo says {i}.0 <i>"]
        scores = [c[1] for c in row["cells"]]
        assert scores[0] == f"gold {0.1 + 0.01 * i:.3f}"
        assert scores[1] == f"gold {0.4 + 0.01 * i:.3f} (+0.300)" and scores[2] == f"gold {0.05 + 0.01 * i:.3f} (-0.050)"
    assert "&lt;i&gt;" in page and "<i>" not in page and "prompt 0 &lt;&amp;&gt;" in page  # escaped
    assert "The first 5 of 7 prompts" in page and "prompt 5 " not in page


def test_samples_without_indices_are_matched_by_prompt_text(tmp_path):
    results = _eval()
    for p in results["policies"]:
        for s in p["samples"]:
            del s["prompt_index"], s["sample_index"]
    page = write_report(tmp_path / "r.html", eval_results=results, run_dirs=[], label_reports=[]).read_text()
    parsed = _SideBySide()
    parsed.feed(page)
    assert [c[0] for c in parsed.rows[2]["cells"]] == ["reference says 2.0 <i>", "dpo says 2.0 <i>", "ppo says 2.0 <i>"]


def test_collapse_and_drift_are_flagged_in_the_verdicts(tmp_path):
    page = write_report(tmp_path / "r.html", eval_results=_eval(), run_dirs=[], label_reports=[]).read_text()
    verdicts = page[page.index("id='verdict'"):page.index("id='frontier'")]
    ppo = verdicts[verdicts.index("<b>ppo</b>"):]
    ppo = ppo[:ppo.index("</li></ul>") + 10]
    assert "⚠ collapsed: distinct-2 0.41 vs 0.60 for the reference" in ppo
    assert "⚠ drifted in length: 48 vs 30 tokens" in ppo
    assert verdicts.count("⚠ collapsed") == 1 and verdicts.count("⚠ drifted") == 1  # dpo and bon are fine
    assert "checkpoints, judged the same way</summary>" in verdicts  # folded, out of the way
    table = page[page.index("id='eval-table'"):]
    assert table.count("<td class='num worse'>48.0</td>") == 1 and table.count("<td class='num worse'>0.410</td>") == 1
    assert table.count("<td class='num worse'>") == 2  # the other lengths and distinct-2s are not marked


def test_summary_text_is_a_short_table_and_one_example():
    text = summary_text(_eval())
    lines = text.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["policy", "method", "gold ± se", "win rate [95%]", "KL", "length",
                                             "distinct-2"]
    names = [line.split()[0] for line in lines[2:8]]
    assert names == ["reference", "dpo", "ppo", "bon:16", "bon:1", "bon:4"]  # no checkpoints
    assert "dpo@step" not in text and "(3 checkpoints left out here" in text
    dpo = next(line for line in lines if line.startswith("dpo "))
    assert "0.400 ± 0.020" in dpo and "0.60 [0.55, 0.65]" in dpo and "3.50" in dpo and "30.0" in dpo
    assert "(analytic)" in next(line for line in lines if line.startswith("bon:4 "))
    assert "warning: ppo: collapsed: distinct-2 0.41 vs 0.60" in text and "warning: ppo: drifted in length" in text
    example = lines[lines.index("one example (the same prompt and seed for every model):"):]
    assert example[1] == "  prompt: prompt 0 <&>"
    assert example[2] == "  reference [gold 0.100]: reference says 0.0 <i>"
    assert example[3] == "  dpo [gold 0.400, +0.300 vs reference]: dpo says 0.0 <i>"
    assert example[4].startswith("  ppo [gold 0.050, -0.050 vs reference]")
    assert len(example) == 5


def test_summary_text_cuts_long_completions_to_one_line():
    results = _eval()
    results["policies"][4]["samples"][-1]["completion"] = "word\n" * 300  # dpo's (reversed) first sample
    line = next(x for x in summary_text(results, example_chars=50).splitlines() if x.startswith("  dpo ["))
    completion = line.split("]: ", 1)[1]
    assert len(completion) == 50 and completion.endswith("…") and "\n" not in completion

"""report.html: every section and policy is there, text is escaped, nothing loads from outside,
and a real browser (headless Chromium) loads every image."""

import base64
import html
import json
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser

import pytest
import yaml

from rlhf.cli import main
from rlhf.eval import ReportInputError, write_report
from rlhf.eval.report import SECTIONS, _recipe_label

EVIL = "<script>alert('x')</script> & <b>bold</b>"


def _sample(prompt, completion, gold, proxy):
    return {"prompt": prompt, "completion": completion, "scores": {"gold": gold, "proxy": proxy}}


def _policy(name, model, gold, proxy, kl, *, flag=None, samples):
    p = {"name": name, "model": model,
         "scores": {"gold": {"mean": gold, "se": 0.05, "n_none": 0}, "proxy": {"mean": proxy, "se": 0.04, "n_none": 1}},
         "kl": {"mean": kl, "se": 0.1 * kl},
         "win_rate": {"gold": {"rate": 0.6, "low": 0.52, "high": 0.68}, "proxy": {"rate": 0.4, "low": 0.3, "high": 0.45}},
         "length": 21.5, "truncated": 0.125, "distinct_1": 0.41, "distinct_2": 0.77, "samples": samples}
    if flag is not None:
        p["overoptimisation"] = flag
    return p


PROMPTS = ["Write a happy review.", [{"role": "user", "content": "Say hi & smile"}], "Describe rain.", "A fourth prompt.",
           "A fifth prompt.", "The sixth prompt is not shown."]


@pytest.fixture
def inputs(tmp_path):
    """An eval.json (reference + 3 policies, one flagged), two run dirs, one label_report.json."""
    dpo_run, grpo_run = tmp_path / "dpo-run", tmp_path / "grpo-run"
    dpo_run.mkdir()
    grpo_run.mkdir()
    (dpo_run / "final").mkdir()
    (dpo_run / "config.yaml").write_text(yaml.safe_dump({"model": "m", "beta": 0.1, "loss_type": "ipo", "precompute_ref": True}))
    (grpo_run / "config.yaml").write_text(yaml.safe_dump({"model": "m", "estimator": "rloo", "num_generations": 4}))
    (dpo_run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 0.7 - 0.01 * s}) + "\n" for s in range(1, 41)))
    (grpo_run / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 0.1, "reward": 0.1 * s, "kl": 0.02 * s, "completion_length": 30 - s})
                + "\n" for s in range(1, 11)) + '{"step": 11, "lo')  # a torn last line, as a killed run leaves

    def samples(tag):
        return [_sample(p, f"{tag} answer {i} {EVIL}", 0.1 * i, 0.2 * i) for i, p in enumerate(PROMPTS)]

    results = {
        "settings": {"seed": 0, "num_samples": 1, "data": "prompts.jsonl"},
        "policies": [
            _policy("reference", "ref-model", 0.0, 0.0, 0.0, samples=samples("ref")),
            _policy("dpo-ipo", str(dpo_run / "final"), 0.4, 0.5, 1.5, samples=samples("dpo"),
                    flag={"flagged": False, "proxy_delta": 0.5, "gold_delta": 0.4, "vs": "reference", "gold": "gold"}),
            _policy("grpo-step-10", str(grpo_run / "checkpoints" / "step-10"), 0.6, 0.9, 3.0, samples=samples("grpo")),
            _policy("hacker", "some/model", -0.2, 2.5, 6.0, flag={"flagged": True, "proxy_delta": 2.5, "gold_delta": -0.2, "vs": "reference", "gold": "gold"},
                    samples=samples("hacker")),
        ],
    }
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "eval.json").write_text(json.dumps(results))
    label_dir = tmp_path / "labels"
    label_dir.mkdir()
    label = {"n_pairs": 200, "n_dropped": 12, "dropped_share": 0.0566, "position_consistency": 0.81, "agreement": 0.74,
             "agreement_se": 0.03, "baseline_longer": 0.62, "baseline_first": 0.5, "tie_rate": 0.03, "n_unparsed": 2,
             "judge": "judge<x>", "judge_kind": "pairwise", "debias": True, "template_sha": "abc123"}  # rlhf label's keys
    (label_dir / "label_report.json").write_text(json.dumps(label))
    return {"results": results, "runs": [dpo_run, grpo_run], "eval_dir": eval_dir, "label_dir": label_dir,
            "out": tmp_path / "out" / "report.html"}


class _Page(HTMLParser):
    """Section ids, <img> sources, table rows (their classes and header cells) and the tags used."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.rows, self.tags, self.links = [], [], [], set(), []
        self._section = None
        self._row = None
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        self.links += [v for k, v in attrs.items() if k in ("src", "href") and v]
        if tag == "section":
            self._section = attrs.get("id")
            self.sections.append(self._section)
        elif tag == "img":
            self.images.append((self._section, attrs.get("src", "")))
        elif tag == "tr":
            self._row = {"section": self._section, "class": attrs.get("class") or "", "th": ""}
            self.rows.append(self._row)
        elif tag == "th" and attrs.get("scope") == "row":
            self._in_th = True

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_th = False

    def handle_data(self, data):
        if self._in_th and self._row is not None:
            self._row["th"] += data


def _parse(path):
    page = _Page()
    page.feed(path.read_text())
    return page


def _png_size(src):
    assert src.startswith("data:image/png;base64,"), src[:40]
    data = base64.b64decode(src.split(",", 1)[1])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_has_every_section_policy_run_and_label_report(inputs):
    out = write_report(inputs["out"], eval_results=inputs["results"], run_dirs=inputs["runs"],
                       label_reports=[inputs["label_dir"] / "label_report.json"])
    assert out == inputs["out"] and out.is_file()
    page = _parse(out)
    assert page.sections == list(SECTIONS)
    table = {r["th"].strip(): r["class"] for r in page.rows if r["section"] == "eval-table" and r["th"]}
    assert set(table) >= {"reference", "dpo-ipo", "grpo-step-10", "hacker ⚠"}  # the flagged one marked
    assert table["hacker ⚠"] == "flagged" and table["dpo-ipo"] == table["reference"] == ""
    runs = {r["th"].strip() for r in page.rows if r["section"] == "training" and r["th"]}
    assert runs == {"dpo-run", "grpo-run"}
    # one image each: frontier, training curves, label agreement; all PNGs of real size, embedded
    assert [s for s, _ in page.images] == ["frontier", "training", "labels"]
    for _, src in page.images:
        width, height = _png_size(src)
        assert width > 300 and height > 200
    assert page.links == [f"#{s}" for s in SECTIONS] + [src for _, src in page.images]  # nothing from outside
    assert not page.tags & {"script", "link", "iframe", "object"}

    text = out.read_text()
    assert "Over-optimisation" in text and "<b>hacker</b> (proxy +2.500, gold -0.200 since reference)" in text
    assert "dpo (ipo)" in text and "rloo" in text  # methods read from the runs' config.yaml
    assert "(1 none)" in text and "12.5%" in text  # the scorer's None count and the truncated share
    assert "agreement with gold" in text and "74.0% ± 3.0" in text and "62.0%" in text and "judge&lt;x&gt;" in text
    assert "<code>template_sha</code>" in text and "<code>n_pairs</code>" not in text  # the rest, folded away
    assert "user: Say hi &amp; smile" in text  # chat prompts as role: content
    assert "The first 5 of 6 prompts" in text and "The sixth prompt" not in text
    assert "Proxy agreement" not in text  # the fixture's eval.json has no proxy_agreement
    # the verdicts: each policy's gold interval against 0.5, the losers with a cause
    verdicts = text[text.index("<section id='verdict'>"):text.index("<section id='frontier'>")]
    assert verdicts.count("✓ beats the reference") == 3  # the fixture's gold intervals are all [0.52, 0.68]
    hacker = dict(inputs["results"]["policies"][3], win_rate={"gold": {"rate": 0.45, "low": 0.36, "high": 0.54}})
    text = write_report(inputs["out"], eval_results={**inputs["results"], "policies": inputs["results"]["policies"][:3]
                                                      + [hacker]}, run_dirs=[], label_reports=[]).read_text()
    assert "<b>hacker</b> (hacker): <span class='verdict same'>no significant change</span>" in text
    agreeing = {**inputs["results"], "proxy_agreement": {"gold": "gold", "agreement": 0.6334, "pairs": 176992}}
    text = write_report(inputs["out"], eval_results=agreeing, run_dirs=[], label_reports=[]).read_text()
    assert "the proxy orders <b>63.3%</b> of the 176,992 pairs" in text


def test_everything_from_models_and_files_is_escaped(inputs):
    page = write_report(inputs["out"], eval_results=inputs["results"], run_dirs=[], label_reports=[]).read_text()
    assert "<script" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    # without runs or labels those sections are left out, not drawn empty
    assert _parse(inputs["out"]).sections == ["verdict", "frontier", "samples", "eval-table"]


def test_method_labels_follow_the_recipe_that_wrote_the_run():
    assert _recipe_label({"loss_type": "sigmoid", "precompute_ref": True}) == "dpo"
    assert _recipe_label({"loss_type": "simpo", "precompute_ref": True}) == "dpo (simpo)"
    assert _recipe_label({"loss_type": "sigmoid", "num_generations": 2}) == "online-dpo"
    assert _recipe_label({"loss_type": "kto", "desirable_weight": 1.0}) == "kto"
    assert _recipe_label({"critic": None, "lam": 0.95, "num_generations": 1}) == "ppo"
    assert _recipe_label({"estimator": "reinforce_pp"}) == "reinforce++"
    assert _recipe_label({"center_coef": 0.0}) == "reward model"
    assert _recipe_label({"max_length": 512}) == "sft"


def test_cli_sorts_paths_by_content_and_rejects_the_rest(inputs, tmp_path, capsys):
    out = tmp_path / "cli.html"
    args = [str(p) for p in inputs["runs"]] + [str(inputs["eval_dir"]), str(inputs["label_dir"])]
    assert main(["report", *args, "--output", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert _parse(out).sections == list(SECTIONS)
    # a file can be named directly too
    assert main(["report", str(inputs["eval_dir"] / "eval.json"), "--output", str(out)]) == 0

    empty = tmp_path / "nothing"
    empty.mkdir()
    assert main(["report", str(empty), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlhf report: error: ") and str(empty) in err and "Traceback" not in err
    assert main(["report", str(tmp_path), "--output", str(out)]) == 2  # a parent of runs: says which are inside
    assert "dpo-run, eval, grpo-run, labels" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing"), "--output", str(out)]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    second = tmp_path / "eval2"
    shutil.copytree(inputs["eval_dir"], second)
    assert main(["report", str(inputs["eval_dir"]), str(second), "--output", str(out)]) == 2
    assert "give one eval output" in capsys.readouterr().err


def test_malformed_inputs_are_user_errors_naming_the_place(inputs, tmp_path):
    run = inputs["runs"][0]
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1}\nnot json\n{"step": 3, "loss": 1}\n')
    with pytest.raises(ReportInputError, match=r"metrics.jsonl:2"):
        write_report(tmp_path / "r.html", eval_results=None, run_dirs=[run], label_reports=[])
    with pytest.raises(ReportInputError, match=r"policies\[1\]"):
        write_report(tmp_path / "r.html", eval_results={"policies": [{"name": "reference"}, {"model": "x"}]},
                     run_dirs=[], label_reports=[])
    with pytest.raises(ReportInputError, match="nothing to report"):
        write_report(tmp_path / "r.html", eval_results=None, run_dirs=[], label_reports=[])
    (inputs["label_dir"] / "label_report.json").write_text("{torn")
    with pytest.raises(ReportInputError, match="label_report.json: not readable JSON"):
        write_report(tmp_path / "r.html", eval_results=None, run_dirs=[], label_reports=[inputs["label_dir"]])


# Runs after the page has loaded; writes what the browser saw into the DOM, which --dump-dom prints.
_CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const result = {n: imgs.length, bad: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
                  sections: Array.from(document.querySelectorAll("section")).map(s => s.id)};
  const out = document.createElement("pre");
  out.id = "browser-check";
  out.textContent = "CHECK" + JSON.stringify(result) + "END";
  document.body.appendChild(out);
});
</script>"""
# A control image that must NOT load, so the check is shown to catch a broken one.
_BROKEN = '<img alt="control-broken" src="data:image/png;base64,iVBORw0KGgoAAAA=">'


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.fail("headless Chromium is needed to check the report as a browser shows it: "
                "install it with `apt-get install chromium` (`make test` does this when it is missing: scripts/test-deps.sh)")


def test_headless_chromium_loads_every_image(inputs, tmp_path):
    out = write_report(inputs["out"], eval_results=inputs["results"], run_dirs=inputs["runs"],
                       label_reports=[inputs["label_dir"]])
    n_images = len(_parse(out).images)
    checked = tmp_path / "checked.html"
    checked.write_text(out.read_text().replace("</main>", _BROKEN + "</main>").replace("</body>", _CHECK + "</body>"))
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="browser-check">CHECK(.*?)END</pre>', proc.stdout)
    assert found, f"chromium printed no check result (exit {proc.returncode}):\n{proc.stderr[-2000:]}"
    result = json.loads(html.unescape(found.group(1)))
    assert result["n"] == n_images + 1 == 4
    assert result["bad"] == ["control-broken"], f"images that did not load: {result['bad']}"
    assert result["sections"] == list(SECTIONS)

"""A static scan of rlhf/ for calls that run code from data: unpickling, eval/exec, remote model code.

Checkpoints and model directories come from disk and from other people; loading them must never
execute what they contain. The scan walks every .py file under rlhf/ with `ast` and lists file:line
for each violation:

- `torch.load(...)` without the keyword `weights_only=True` (a constant; torch's default changed
  across versions, and a variable may be False);
- `pickle.load` / `pickle.loads` (also `Unpickler`), and any `cPickle`, `dill` or `joblib.load` call;
- the builtins `eval(...)` / `exec(...)` (bare names; `model.eval()` is fine);
- `trust_remote_code=True` hard-coded as a keyword constant (it must come from the user's config).
"""

from __future__ import annotations

import ast
from pathlib import Path

import rlhf

PACKAGE = Path(rlhf.__file__).resolve().parent


def _dotted(node: ast.AST) -> str | None:
    """'a.b.c' for a Name / Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _is_true(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> full dotted name for imports (`from pickle import loads as l` -> l: pickle.loads)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


_UNPICKLERS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads",
               "joblib.load", "numpy.load"}  # numpy.load only with allow_pickle=True (see below)
_UNPICKLING_MODULES = ("cPickle", "dill")


def scan_source(source: str, filename: str = "<string>") -> list[str]:
    """Violations in one module's source, as 'filename:line: what'."""
    tree = ast.parse(source, filename=filename)
    aliases = _aliases(tree)
    found = []

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        keywords = {keyword.arg: keyword.value for keyword in node.keywords if keyword.arg}
        if "trust_remote_code" in keywords and _is_true(keywords["trust_remote_code"]):
            report(node, "trust_remote_code=True hard-coded")
        if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec") and node.func.id not in aliases:
            report(node, f"builtin {node.func.id}()")
            continue
        name = _dotted(node.func)
        if name is None:
            continue
        head, _, rest = name.partition(".")
        full = f"{aliases[head]}.{rest}" if head in aliases and rest else aliases.get(head, name)
        if full == "torch.load" and not _is_true(keywords.get("weights_only")):
            report(node, "torch.load without weights_only=True")
        elif full == "numpy.load":
            if "allow_pickle" in keywords and not (isinstance(keywords["allow_pickle"], ast.Constant)
                                                    and keywords["allow_pickle"].value is False):
                report(node, "numpy.load with allow_pickle")
        elif full in _UNPICKLERS:
            report(node, f"{full}() unpickles")
        elif full.split(".")[0] in _UNPICKLING_MODULES:
            report(node, f"{full}() unpickles")
    return found


def test_no_code_runs_from_data_in_rlhf():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20, f"found only {len(files)} files under {PACKAGE}"
    found = []
    for path in files:
        found += scan_source(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))
    assert not found, "unsafe calls:\n" + "\n".join(found)


BAD = {
    "import torch\ntorch.load(f)\n": "torch.load without weights_only=True",
    "import torch\ntorch.load(f, weights_only=False)\n": "torch.load without weights_only=True",
    "import torch\ntorch.load(f, weights_only=flag)\n": "torch.load without weights_only=True",
    "import torch as t\nt.load(f, map_location='cpu')\n": "torch.load without weights_only=True",
    "from torch import load\nload(f)\n": "torch.load without weights_only=True",
    "import pickle\npickle.load(f)\n": "pickle.load() unpickles",
    "import pickle\npickle.loads(b)\n": "pickle.loads() unpickles",
    "from pickle import loads\nloads(b)\n": "pickle.loads() unpickles",
    "import cPickle\ncPickle.load(f)\n": "cPickle.load() unpickles",
    "import dill\ndill.loads(b)\n": "dill.loads() unpickles",
    "import joblib\njoblib.load(f)\n": "joblib.load() unpickles",
    "import numpy as np\nnp.load(f, allow_pickle=True)\n": "numpy.load with allow_pickle",
    "eval(text)\n": "builtin eval()",
    "exec(code, {})\n": "builtin exec()",
    "AutoModel.from_pretrained(d, trust_remote_code=True)\n": "trust_remote_code=True hard-coded",
}

GOOD = [
    "model.eval()\n",
    "self.model.eval().to('cpu')\n",
    "import torch\ntorch.load(f, weights_only=True)\n",
    "import torch\ntorch.load(f, map_location='cpu', weights_only=True)\n",
    "import json\njson.load(f)\n",
    "from safetensors.torch import load_file\nload_file(f)\n",
    "import numpy as np\nnp.load(f)\n",
    "AutoModel.from_pretrained(d, trust_remote_code=config.trust_remote_code)\n",
    "AutoModel.from_pretrained(d, trust_remote_code=False)\n",
    "evaluate(x)\nexecute(y)\n",
]


def test_the_scanner_finds_each_violation():
    for source, what in BAD.items():
        source = "x = 1\n" + source  # the violation is on the last line
        found = scan_source(source, "bad.py")
        line = source.count("\n")
        assert found == [f"bad.py:{line}: {what}"], (source, found)


def test_the_scanner_passes_safe_code():
    for source in GOOD:
        assert scan_source(source, "good.py") == [], source

"""Evaluation: `rlhf eval` (gold reward, KL to the reference, win rate, length, diversity) and
`rlhf report` (one self-contained report.html of evals, training runs and RLAIF label quality).

The calls live in their modules: `rlhf.eval.evaluate.evaluate` and `rlhf.eval.report.report`.
Neither is re-exported here: a function bound to its own module's name would shadow the module
(`rlhf.eval.evaluate` would stop being importable as one).
"""

from rlhf.eval.evaluate import EvalConfig
from rlhf.eval.report import ReportConfig, ReportInputError, write_report

__all__ = ["EvalConfig", "ReportConfig", "ReportInputError", "write_report"]

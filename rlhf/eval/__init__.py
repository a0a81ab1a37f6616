"""Evaluation: `rlhf eval` (gold reward, KL to the reference, win rate, length, diversity) and
`rlhf report` (one self-contained report.html of evals, training runs and RLAIF label quality).

The report's CLI call lives in its module: `rlhf.eval.report.report`. It is not re-exported
here: a function bound to its own module's name would shadow the module.
"""

from rlhf.eval.report import ReportConfig, ReportInputError, write_report

__all__ = ["ReportConfig", "ReportInputError", "write_report"]

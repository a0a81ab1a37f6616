"""Where per-step metrics go: metrics.jsonl always, TensorBoard / W&B / Trackio when asked and installed."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from rlhf.config import ConfigError

logger = logging.getLogger(__name__)

_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


class MetricsWriter:
    """Appends one JSON object per optimiser step; on resume, drops lines past the resumed step."""

    def __init__(self, output_dir: Path, *, resume_step: int, report_to: str, run_config: dict):
        self.path = output_dir / "metrics.jsonl"
        if resume_step > 0 and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a")
        self._extra = []
        for name in [n.strip() for n in report_to.split(",") if n.strip() and n.strip() != "none"]:
            if name not in _PACKAGES:
                raise ConfigError(f"config key 'report_to': unknown logger {name!r}; expected none, {', '.join(_PACKAGES)}")
            if importlib.util.find_spec(_PACKAGES[name]) is None:
                logger.warning("report_to=%s: package '%s' is not installed; logging to metrics.jsonl only", name, _PACKAGES[name])
                continue
            self._extra.append(_open_extra(name, output_dir, run_config))

    def write(self, metrics: dict) -> None:
        self._file.write(json.dumps(metrics) + "\n")
        self._file.flush()
        for log in self._extra:
            log(metrics)

    def close(self) -> None:
        self._file.close()


def _open_extra(name: str, output_dir: Path, run_config: dict):
    if name == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output_dir / "tensorboard"))

        def log(m):
            for k, v in m.items():
                if k != "step" and isinstance(v, (int, float)):
                    writer.add_scalar(k, v, m["step"])
            writer.flush()

        return log
    module = __import__(name)  # wandb and trackio share the init/log API
    module.init(project="rlhf", config=run_config, dir=str(output_dir)) if name == "wandb" else module.init(project="rlhf", config=run_config)
    return lambda m: module.log({k: v for k, v in m.items() if k != "step"}, step=m["step"])

"""rlhf: align language models with human and AI feedback, end to end.

The demo is `rlhf.demo.pipeline.demo`: not exported here, where its name would hide the package `rlhf.demo`."""

__version__ = "0.1.0"

from rlhf.eval.evaluate import EvalConfig, evaluate  # noqa: E402
from rlhf.eval.report import ReportConfig, report  # noqa: E402
from rlhf.recipes.dpo import DPOConfig, dpo  # noqa: E402
from rlhf.recipes.grpo import GRPOConfig, grpo  # noqa: E402
from rlhf.recipes.kto import KTOConfig, kto  # noqa: E402
from rlhf.recipes.label import LabelConfig, label  # noqa: E402
from rlhf.recipes.online_dpo import OnlineDPOConfig, online_dpo  # noqa: E402
from rlhf.recipes.ppo import PPOConfig, ppo  # noqa: E402
from rlhf.recipes.reward import RewardConfig, reward  # noqa: E402
from rlhf.recipes.sft import SFTConfig, sft  # noqa: E402

__all__ = ["DPOConfig", "EvalConfig", "GRPOConfig", "KTOConfig", "LabelConfig", "OnlineDPOConfig",
           "PPOConfig", "ReportConfig", "RewardConfig", "SFTConfig", "dpo", "evaluate", "grpo", "kto", "label",
           "online_dpo", "ppo", "report", "reward", "sft", "__version__"]

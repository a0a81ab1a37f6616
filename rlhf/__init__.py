"""rlhf: align language models with human and AI feedback, end to end."""

__version__ = "0.1.0"

from rlhf.recipes.dpo import DPOConfig, dpo  # noqa: E402
from rlhf.recipes.grpo import GRPOConfig, grpo  # noqa: E402
from rlhf.recipes.kto import KTOConfig, kto  # noqa: E402
from rlhf.recipes.ppo import PPOConfig, ppo  # noqa: E402
from rlhf.recipes.reward import RewardConfig, reward  # noqa: E402
from rlhf.recipes.sft import SFTConfig, sft  # noqa: E402

__all__ = ["DPOConfig", "GRPOConfig", "KTOConfig", "PPOConfig", "RewardConfig", "SFTConfig",
           "dpo", "grpo", "kto", "ppo", "reward", "sft", "__version__"]

"""rlhf: align language models with human and AI feedback, end to end."""

__version__ = "0.1.0"

from rlhf.recipes.sft import SFTConfig, sft  # noqa: E402

__all__ = ["SFTConfig", "sft", "__version__"]

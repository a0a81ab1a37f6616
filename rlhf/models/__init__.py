"""Models: load a spec (local HF directory or the embedded default), LoRA, save a final directory."""

from .attention import supports_branches
from .dropout import disable_dropout, eval_mode
from .loading import DEFAULT_MODEL, ModelError, load_causal_lm, load_tokenizer, resolve_model_dir
from .lora import LoraConfig, apply_lora, hf_model, is_peft_model, unwrap_model
from .saving import save_pretrained_model

__all__ = [
    "DEFAULT_MODEL",
    "LoraConfig",
    "ModelError",
    "apply_lora",
    "disable_dropout",
    "eval_mode",
    "hf_model",
    "is_peft_model",
    "load_causal_lm",
    "load_tokenizer",
    "resolve_model_dir",
    "save_pretrained_model",
    "supports_branches",
    "unwrap_model",
]

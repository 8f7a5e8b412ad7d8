# `make help` lists the targets. Every target creates (or reuses) the virtual environment .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install demo test test-slow test-slurm lint format bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the matching torch/torchvision pair first, so the resolver keeps it
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the project with its test tools

demo: $(STAMP) ## run the main job on the embedded default data (pretrain, split, oracle, unlearn, evaluate)
	$(PY) train.py

test: $(STAMP) ## run the test suite (slow tests excluded)
	$(PY) -m pytest -q

test-slow: $(STAMP) ## run only the slow tests
	$(PY) -m pytest -q -m slow

# up, the `slurm` tests, down (also when they fail); root installs the Debian packages if missing
test-slurm: $(STAMP) ## start a two-node Slurm on this machine, run the slurm tests, stop it
	@trap .ci/slurm-down EXIT; conf=$$(.ci/slurm-up) && eval "$$conf" && $(PY) -m pytest -q -m slurm

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## ruff autoformat
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP) ## benchmarks: one table of ratios -> docs/benchmarks.md (< 10 min); QUICK=1 shorter
	$(PY) -m bench $(if $(QUICK),--quick)

clean: ## remove logs and caches of this checkout (not the stage cache)
	rm -rf logs outputs multirun .pytest_cache .ruff_cache

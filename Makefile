# panacea_pl — `make help` lists the targets. Every target creates or reuses .venv and installs
# exactly the pinned set in requirements/lock.txt, so a fresh machine gets what CI gets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.DEFAULT_GOAL := help
.PHONY: help install test test-fast gpu-dry-run demo lint format bench lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements/lock.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the pinned dependencies and the package

test: $(STAMP) ## run every test this machine can run (slow ones included)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP) ## run the tests not marked slow
	$(BIN)/python -m pytest -q -m "not slow"

gpu-dry-run: $(STAMP) ## run bench/gpu/check.sh on CPU at tiny sizes and check every section (2-4 min)
	PANACEA_GPU_DRY_RUN=1 $(BIN)/python -m pytest -q tests/test_gpu_check.py -k dry_run

demo: $(STAMP) ## the main job: train Panacea on the stories benchmark and plot its Pareto front
	$(BIN)/panacea-pl demo

lint: $(STAMP) ## ruff check and format check
	$(BIN)/ruff check src tests bench experiments
	$(BIN)/ruff format --check src tests bench experiments

format: $(STAMP) ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix src tests bench experiments
	$(BIN)/ruff format src tests bench experiments

bench: $(STAMP) ## run the speed benchmarks (side-by-side ratios against PEFT/TRL)
	$(BIN)/python bench/adapter_overhead.py --threads 1
	$(BIN)/python bench/dpo_step.py

lock: ## re-pin requirements/lock.txt from the current .venv
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -i '^panacea' | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/' > requirements/lock.txt

clean: ## remove caches and build outputs (keeps .venv)
	rm -rf .pytest_cache .ruff_cache build dist src/*.egg-info

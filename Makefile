# univg — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines pin the CPU wheel of torch; GPU machines: `make install TORCH=cuda` (no pin).
TORCH ?= cpu
CONSTRAINTS := $(if $(filter cpu,$(TORCH)),-c constraints/cpu.txt,)
SCALE ?= full
DEMO ?= full
SEED ?= 0
PYTEST := $(PY) -m pytest -q -p no:cacheprovider
# pytest-xdist workers for the fast tests (whole files per worker; 0 or 1: one process). The slow
# tests run in one process: each already keeps both cores of a 2-core machine busy.
TEST_WORKERS ?= 2
TEST_PARALLEL := $(if $(filter-out 0 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadgroup)
export MALLOC_MMAP_MAX_ ?= 0
export TOKENIZERS_PARALLELISM ?= false

.DEFAULT_GOAL := help
.PHONY: help install test test-slow test-all lint format demo demo-seeds bench bench-quick debug rehearsal clean

help: ## Show this help
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(CONSTRAINTS) -e ".[dev]"
	@touch $@

install: $(VENV)/.installed ## Create .venv and install univg with its test tools (CPU torch unless TORCH=cuda)

test: $(VENV)/.installed ## Fast tests (slow end-to-end tests skipped; TEST_WORKERS=2 processes)
	$(PYTEST) $(TEST_PARALLEL) -m "not slow"

test-slow: $(VENV)/.installed ## Slow end-to-end tests only
	$(PYTEST) -m "slow"

test-all: test test-slow ## Every test, as CI runs them

lint: $(VENV)/.installed ## ruff check + ruff format --check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/.installed ## Apply ruff format and autofixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

demo: $(VENV)/.installed ## The paper's pipeline in miniature on CPU -> runs/demo (DEMO=smoke: ~2 min check; SEED=n)
	$(PY) -m univg.demo --seed $(SEED) $(if $(filter smoke,$(DEMO)),--smoke --out runs/demo_smoke,--out runs/demo)

demo-seeds: $(VENV)/.installed ## The demo per seed (SEEDS=0,1,2), then the per-seed and mean table -> runs/demo_seeds/seeds.md
	$(PY) -m univg.demo.seeds --seeds $(or $(SEEDS),0$(comma)1$(comma)2) --out runs/demo_seeds

bench: $(VENV)/.installed ## Benchmarks: GRPO step vs TRL (ours, TRL completion-only, TRL as shipped), eval, data, memory plan
	$(PY) benchmarks/grpo_step.py
	$(PY) benchmarks/eval_throughput.py
	$(PY) benchmarks/data_loading.py
	$(PY) benchmarks/memory_plan.py

bench-quick: $(VENV)/.installed ## One quick step of each GRPO benchmark variant (smoke)
	$(PY) benchmarks/grpo_step.py --quick

rehearsal: $(VENV)/.installed ## The 7B configs as written (tiny preset, 2 CPU processes): stage 1 -> 2 -> eval, invariants checked
	$(PY) -m univg.rehearsal --out runs/rehearsal

debug: $(VENV)/.installed ## Tiny fit on synthetic data (well under a minute on 2 CPU cores)
	$(PY) -m univg fit --config configs/debug.yaml

-include make/*.mk

clean: ## Remove runs/ and caches
	rm -rf runs lightning_logs .pytest_cache .ruff_cache

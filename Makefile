# Everything a person types. `make test` and `make reproduce` work from a fresh clone: `setup` builds .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel by default (it lies on disk on the project's machines). GPU users: install their CUDA build of
# torch into .venv first (any 2.13/2.14 release satisfies pyproject's range) or pass TORCH="torch==2.13.0 ...".
TORCH ?= torch==2.13.0
PROFILE ?= cpu
# every family that has the profile (found by the registry), unless FAMILY names one (make reproduce FAMILY=glue);
# expanded when a recipe runs, after `setup` has built the venv
FAMILY ?=
RUN_FAMILIES = $(if $(FAMILY),$(FAMILY),$(shell $(EXP) families --with-profile $(PROFILE) --names))
RESULTS_DIR ?= results
EXP := $(BIN)/python -m experiments

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-slow lint format bench reproduce tables plan analyze verify clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[bench,dev]'
	touch $@

test: setup
	$(BIN)/pytest -q

test-slow: setup
	$(BIN)/pytest -q -m slow

lint: setup
	$(BIN)/ruff check loradash baselines experiments tests bench
	$(BIN)/ruff format --check loradash baselines experiments tests bench
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format loradash baselines experiments tests bench
	$(BIN)/ruff check --fix loradash baselines experiments tests bench

bench: setup
	$(BIN)/python bench/bench_loradash.py
	$(BIN)/python bench/bench_generation.py

plan: setup
	for f in $(RUN_FAMILIES); do $(EXP) list --family $$f --profile $(PROFILE) --results-dir $(RESULTS_DIR) || exit 1; done

# Runs what is missing or stale (resumable), then regenerates every table; a failed run does not stop the others.
reproduce: setup
	status=0; for f in $(RUN_FAMILIES); do $(EXP) sweep --family $$f --profile $(PROFILE) --results-dir $(RESULTS_DIR) --no-progress || status=1; done; \
	$(MAKE) tables && exit $$status

tables: setup
	for f in $(RUN_FAMILIES); do $(EXP) tables --family $$f --profile $(PROFILE) --results-dir $(RESULTS_DIR) || exit 1; done

# Reruns a sample of committed runs (one LoRA-Dash, one LoRA by default) and compares them with their records.
verify: setup
	for f in $(RUN_FAMILIES); do $(EXP) verify --family $$f --profile $(PROFILE) --results-dir $(RESULTS_DIR) || exit 1; done

# The paper's questions about task-specific directions, from the records (and, with ANALYZE_TRAIN=1, a few
# minutes of training): results/<profile>/<family>/analysis/.
ANALYZE_TRAIN ?=
analyze: setup
	for f in $(RUN_FAMILIES); do $(EXP) analyze --family $$f --profile $(PROFILE) --results-dir $(RESULTS_DIR) $(if $(ANALYZE_TRAIN),--train) || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# Everything a person types. `make test` and `make reproduce` work from a fresh clone: `setup` builds .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU wheel by default (it lies on disk on the project's machines). GPU users: install their CUDA build of
# torch into .venv first (any 2.13/2.14 release satisfies pyproject's range) or pass TORCH="torch==2.13.0 ...".
TORCH ?= torch==2.13.0
PROFILE ?= cpu
# With no PROFILE given, the committed CPU benchmark: `cpu`, then `cpu-power` (GLUE's same-rank question with
# 8 paired seeds) in the families that have it; PROFILE=... picks one (or several, space-separated).
PROFILES = $(if $(filter file,$(origin PROFILE)),cpu cpu-power,$(PROFILE))
# For each profile, every family that has it (found by the registry), or FAMILY's if it has it (FAMILY=glue);
# run inside a recipe's loop over $$p, after `setup` has built the venv.
FAMILY ?=
FAMILIES_OF = $(EXP) families --with-profile $$p --names $(if $(FAMILY),--family $(FAMILY))
EACH = for p in $(PROFILES); do fams=$$($(FAMILIES_OF)) || exit 2; for f in $$fams; do
END_EACH = done; done
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
	$(EACH) $(EXP) list --family $$f --profile $$p --results-dir $(RESULTS_DIR) || exit 1; $(END_EACH)

# Runs what is missing or stale (resumable), then regenerates every table; a failed run does not stop the others.
reproduce: setup
	status=0; $(EACH) \
	  $(EXP) sweep --family $$f --profile $$p --results-dir $(RESULTS_DIR) --no-progress || status=1; $(END_EACH); \
	$(MAKE) tables && exit $$status

tables: setup
	$(EACH) $(EXP) tables --family $$f --profile $$p --results-dir $(RESULTS_DIR) || exit 1; $(END_EACH)

# Reruns a sample of committed runs (one LoRA-Dash, one LoRA by default) and compares them with their records.
verify: setup
	$(EACH) $(EXP) verify --family $$f --profile $$p --results-dir $(RESULTS_DIR) || exit 1; $(END_EACH)

# The paper's questions about task-specific directions, from the records (and, with ANALYZE_TRAIN=1, a few
# minutes of training): results/<profile>/<family>/analysis/.
ANALYZE_TRAIN ?=
analyze: setup
	$(EACH) $(EXP) analyze --family $$f --profile $$p --results-dir $(RESULTS_DIR) $(if $(ANALYZE_TRAIN),--train) || exit 1; $(END_EACH)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache

# Everything a person types. `make test` and `make reproduce` work from a fresh clone: `setup` builds .venv.
# The wheel (`pip install .`) holds the library `loradash` only; the harness (experiments/, baselines/, bench/)
# runs from this checkout, which `setup` puts on the venv's path (loradash-checkout.pth), so `python -m
# experiments` works from any folder and in the sweep's subprocesses and cluster jobs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Every package `make setup` installs is pinned in requirements.lock (compiled by `make lock` with uv from
# pyproject's ranges; the versions the suite and the committed records were made with). torch is locked as its
# release (torch==X): here pip takes the CPU wheel that lies on disk; GPU users install the CUDA build of that
# release into .venv first, which satisfies the pin and is kept (README: "Versions"). TORCH overrides it.
LOCK := requirements.lock
TORCH ?= $(shell grep -m1 '^torch==' $(LOCK))
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

.PHONY: setup lock test test-latest test-slow lint format bench reproduce tables plan analyze verify clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q 'pip==26.3'
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -c "import pathlib, sysconfig; pathlib.Path(sysconfig.get_paths()['purelib'], 'loradash-checkout.pth').write_text('$(CURDIR)\n')"
	touch $@

# Regenerates requirements.lock from pyproject's ranges, keeping every pin that still satisfies them;
# UPGRADE=1 moves every package to its newest allowed release, UPGRADE=transformers (names, space-separated)
# only those. Run `make test` after it, and refresh the committed records or keep the old pins.
UPGRADE ?=
UV_FIND_LINKS ?= $(PIP_FIND_LINKS)
export UV_FIND_LINKS
# uv, unlike pip, does not prefer the local CPU build of torch over PyPI's CUDA one: a constraint on the build
# (TORCH_BUILD) keeps the nvidia-* packages out of the lock; the pin is written without its build label.
TORCH_BUILD ?= cpu
lock: setup
	echo "$(TORCH)+$(TORCH_BUILD)" > $(VENV)/torch-build.txt
	$(BIN)/uv pip compile pyproject.toml --extra bench --extra dev --python-version 3.11 --quiet \
	  --custom-compile-command 'make lock' -o $(LOCK) -c $(VENV)/torch-build.txt \
	  $(if $(filter 1,$(UPGRADE)),--upgrade,$(foreach p,$(UPGRADE),--upgrade-package $(p)))
	sed -i -E 's/^torch==([^+ ]+)\+[^ ]+/torch==\1/; /^    #   -c .*torch-build.txt$$/d' $(LOCK)

test: setup
	$(BIN)/pytest -q

# The suite on the newest releases pyproject's ranges allow, in a scratch venv (.venv-latest): an upstream
# break shows here before users see it. Not part of CI; prints the versions that differ from the lock.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST) && $(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q $(TORCH)
	$(LATEST)/bin/pip install -q --upgrade -e '.[bench,dev]'
	$(LATEST)/bin/python -m experiments.harness.lockcheck $(LOCK) || true
	$(LATEST)/bin/pytest -q

# The slow checks; tests/test_site.py's browser test needs Debian's chromium, installed here once (as root, or
# through sudo) if it is not on PATH.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
test-slow: setup
	command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get install -y -q chromium \
	  || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }; }
	$(BIN)/pytest -q -m slow

lint: setup
	$(BIN)/ruff check loradash baselines experiments tests bench scripts
	$(BIN)/ruff format --check loradash baselines experiments tests bench scripts
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format loradash baselines experiments tests bench scripts
	$(BIN)/ruff check --fix loradash baselines experiments tests bench scripts

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
	rm -rf $(VENV) $(LATEST) .pytest_cache .ruff_cache .mypy_cache

# Two entry points that work on a fresh machine: `make demo` and `make test` (both on the locked versions).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
# torch stays on the CPU build in every environment: the newest torch on the registry resolves to CUDA wheels of GBs.
TORCH := requirements/torch.txt
OLDEST := requirements/oldest.txt
PYTEST := -m pytest -q -p no:cacheprovider
REPORT_VERSIONS := pip list 2>/dev/null | grep -iE '^(torch|transformers|tokenizers|accelerate|trl|peft|huggingface.hub) '

.PHONY: install test test-all test-latest test-oldest lint lock demo clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first: the pinned CPU build installs offline; anything else would pull CUDA wheels.
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(LOCK) torch
	$(BIN)/pip install --quiet -c $(LOCK) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python $(PYTEST)

test-all: lint
	$(BIN)/python $(PYTEST) -m ""

# The newest release of every dependency pyproject admits (no lock), torch on the CPU build pinned first.
test-latest:
	rm -rf .venv-latest && $(PY) -m venv .venv-latest
	.venv-latest/bin/pip install --quiet -c $(TORCH) torch
	.venv-latest/bin/pip install --quiet --upgrade --upgrade-strategy eager -c $(TORCH) -e ".[dev]"
	.venv-latest/bin/$(REPORT_VERSIONS)
	.venv-latest/bin/python $(PYTEST)

# The lowest versions of torch/transformers/accelerate/trl/peft that pyproject admits (requirements/oldest.txt).
test-oldest:
	rm -rf .venv-oldest && $(PY) -m venv .venv-oldest
	.venv-oldest/bin/pip install --quiet -c $(OLDEST) torch
	.venv-oldest/bin/pip install --quiet -c $(OLDEST) -e ".[dev]"
	.venv-oldest/bin/$(REPORT_VERSIONS)
	.venv-oldest/bin/python $(PYTEST)

# Regenerate the lock: a fresh venv with the newest releases pyproject admits (torch CPU), frozen.
lock:
	rm -rf .venv-lock && $(PY) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet -c $(TORCH) torch
	.venv-lock/bin/pip install --quiet -c $(TORCH) -e ".[dev]"
	{ sed -n '1,2p' $(LOCK) | sed "s/generated [0-9-]*/generated $$(date -u +%F)/"; \
	  .venv-lock/bin/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock

demo: $(STAMP)
	$(BIN)/vcontrast demo --out out

clean:
	rm -rf $(VENV) .venv-latest .venv-oldest .venv-lock out .pytest_cache

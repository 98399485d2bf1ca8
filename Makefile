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

.PHONY: install test test-all test-gpu test-latest test-oldest test-torchvision lint lock demo clean test-lmms

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

# The `gpu` tests (tests/gpu), on a machine with a CUDA GPU: run with the Python whose torch is a CUDA build and
# has vcontrast installed (`make test-gpu PY=path/to/python`); the .venv here holds the CPU build, so they skip.
test-gpu:
	$(PY) $(PYTEST) -m gpu -rA tests/gpu

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

# The suite where torchvision is installed, as on a typical GPU image: transformers then loads the torchvision image
# processors, which resize differently from the PIL ones (`vcontrast.models.image_backend`). No CPU build of
# torchvision exists here, so this takes torch 2.14.1 + torchvision 0.29.1, CUDA builds that run on the CPU (about
# 5.5 GB), and the lock's versions of everything else.
TORCHVISION := torch==2.14.1 torchvision==0.29.1
test-torchvision:
	rm -rf .venv-torchvision && $(PY) -m venv .venv-torchvision
	.venv-torchvision/bin/pip install --quiet $(TORCHVISION)
	grep -v '^torch==' $(LOCK) > .venv-torchvision/constraints.txt
	.venv-torchvision/bin/pip install --quiet -c .venv-torchvision/constraints.txt -e ".[dev]"
	.venv-torchvision/bin/$(REPORT_VERSIONS)
	.venv-torchvision/bin/pip list 2>/dev/null | grep -i '^torchvision '
	.venv-torchvision/bin/python $(PYTEST)

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
	rm -rf $(VENV) .venv-latest .venv-oldest .venv-torchvision .venv-lock out .pytest_cache $(LMMS_DIR)

# --- lmms-eval integration (tests/bench/test_lmms.py) ----------------------------------------------------------
# lmms-eval 0.7.3 requires torch 2.14 + CUDA wheels, wandb, openai, opencv, yt-dlp, ...: it is installed --no-deps
# into its own folder with only what its model registry and evaluator import (filelock<4: lmms-eval patches
# filelock._api, gone in filelock 4), and its tests run with that folder on PYTHONPATH. Run before every submission.
LMMS_DIR := .lmms
LMMS_STAMP := $(LMMS_DIR)/.installed
LMMS_PKGS := lmms-eval==0.7.3 evaluate==0.4.6 loguru==0.7.3 sacrebleu==2.6.0 portalocker==4.4.2 tabulate==0.10.0 \
	colorama==0.4.6 lxml==6.1.3 tenacity==9.2.1 aiohttp==3.14.5 aiohappyeyeballs==2.7.1 aiosignal==1.4.0 \
	frozenlist==1.8.0 multidict==7.2.1 yarl==1.25.1 propcache==0.5.4 attrs==26.1.0 requests==2.34.2 \
	urllib3==2.8.0 certifi==2026.10.19.post1 pytz==2026.6 filelock==3.32.7

$(LMMS_STAMP): | $(STAMP)
	$(BIN)/pip install --quiet --no-deps --target $(LMMS_DIR) $(LMMS_PKGS)
	touch $(LMMS_STAMP)

test-lmms: $(LMMS_STAMP)
	PYTHONPATH=$(LMMS_DIR) $(BIN)/python $(PYTEST) tests/bench/test_lmms.py
# --- end lmms-eval ---------------------------------------------------------------------------------------------

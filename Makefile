# Two entry points that work on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-all lint demo clean test-lmms

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first: the pinned CPU build installs offline; anything else would pull CUDA wheels.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest -q

test-all: lint
	$(BIN)/python -m pytest -q -m ""

demo: $(STAMP)
	$(BIN)/vcontrast demo --out out

clean:
	rm -rf $(VENV) out .pytest_cache $(LMMS_DIR)

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
	PYTHONPATH=$(LMMS_DIR) $(BIN)/python -m pytest -q tests/bench/test_lmms.py
# --- end lmms-eval ---------------------------------------------------------------------------------------------

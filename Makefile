# Every target creates the virtualenv and installs on first use, so a fresh clone needs nothing else.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install up test lint bench faults clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/sponsorflow up

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.persist_activity
	$(BIN)/python -m bench.stage_changes
	$(BIN)/python -m bench.import_throughput
	$(BIN)/python -m bench.match_recalc
	$(BIN)/python -m bench.dashboard

# The fault suite: real processes, faults injected, the HTTP contract checked (tests/faults/).
faults: $(STAMP)
	$(BIN)/python -m tests.faults

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

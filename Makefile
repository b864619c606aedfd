# Every target creates the virtualenv and installs on first use, so a fresh clone needs nothing else.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser up test lint bench faults record-histories clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/sponsorflow up

# The browser tests drive Debian's Chromium through Playwright (Playwright's own browser download
# cannot work here). Nothing to do when a chromium is on PATH or SPONSORFLOW_CHROMIUM names one;
# otherwise apt-get installs it, as root or through `sudo -n`, or the target stops and says how.
CHROMIUM_PKGS := chromium fonts-liberation
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(CHROMIUM_PKGS)

browser:
	@if [ -n "$$SPONSORFLOW_CHROMIUM" ] && [ -x "$$SPONSORFLOW_CHROMIUM" ]; then exit 0; fi; \
	if command -v chromium >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then SUDO="sudo -n"; \
	else SUDO="none"; fi; \
	if [ "$$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make test needs Chromium for the browser tests (tests/e2e/test_web_app.py) and cannot install it:" >&2; \
	  echo "not root, no passwordless sudo, or no apt-get. Install it once, as root on Debian:" >&2; \
	  echo "    apt-get install -y --no-install-recommends $(CHROMIUM_PKGS)" >&2; \
	  echo "(or point SPONSORFLOW_CHROMIUM at a Chromium binary), then run make test again." >&2; \
	  exit 1; \
	fi; \
	echo "installing Debian's $(CHROMIUM_PKGS) for the browser tests ..."; \
	$$SUDO env $(APT_INSTALL) \
	  || { $$SUDO apt-get update -q && $$SUDO env $(APT_INSTALL); } || exit 1; \
	command -v chromium >/dev/null 2>&1 \
	  || { echo "apt-get installed $(CHROMIUM_PKGS) but no chromium is on PATH" >&2; exit 1; }

test: $(STAMP) browser
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench.persist_activity
	$(BIN)/python -m bench.stage_changes
	$(BIN)/python -m bench.import_throughput
	$(BIN)/python -m bench.import_kinds
	$(BIN)/python -m bench.match_recalc
	$(BIN)/python -m bench.dashboard
	$(BIN)/python -m bench.instrumentation
	$(BIN)/python -m bench.webhook_fanout

# The fault suite: real processes, faults injected, the HTTP contract checked (tests/faults/).
faults: $(STAMP)
	$(BIN)/python -m tests.faults

# The replay corpus (tests/histories/<workflow type>/<scenario>.json): runs every scenario of
# tests/helpers/scenarios.py against real servers and ADDS a file for each scenario that has none or
# whose commands changed (never overwrites), then rewrites tests/workflow_contract.json.
# RECORD_ARGS="--only DealWorkflow --dry-run" (see python -m tests.helpers.recorder --help).
record-histories: $(STAMP)
	$(BIN)/python -m tests.helpers.recorder $(RECORD_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

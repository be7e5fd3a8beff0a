# The two commands the README promises: `make run` and `make test`.
# Both install what they need first, so they work on a fresh Debian 12 machine.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
# The dashboard's front-end libraries (xterm.js), exactly as web/package-lock.json pins
# them, from the npm registry; the control plane serves web/node_modules at /static/vendor.
# (Defined before `install`: make expands a rule's prerequisites as it reads the rule.)
WEB_STAMP = web/node_modules/.package-lock.json

.PHONY: run test install system-deps lint typecheck unit integration e2e bench clean

run: install
	$(BIN)/wrenn up

test: install lint typecheck
	$(BIN)/pytest -q tests

install: system-deps $(STAMP) $(WEB_STAMP)

$(WEB_STAMP): web/package.json web/package-lock.json
	npm ci --prefix web --ignore-scripts --no-audit --no-fund

system-deps:
	@scripts/install-system-deps

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# The wrenn SDK is the control plane's contract in e2e tests. It declares Python >= 3.13
	# but runs on 3.11, hence installed on its own.
	$(BIN)/pip install -q --ignore-requires-python wrenn==0.3.0
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

e2e: install
	$(BIN)/pytest -q tests/e2e

# Every bench, one JSON summary (bench-summary.json) and a table; `BENCH_ARGS=--quick` for
# a smoke run. Run on a quiet machine: the figures are wall-clock.
bench: install
	$(BIN)/python bench/summary.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

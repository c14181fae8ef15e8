# Two commands on a fresh machine: `make demo` runs the system, `make test` tests it
# (`make up` serves the stack for other callers).
# Both create the virtual environment and install on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install install-browser up demo test lint typecheck protos check-protos pytest fuzz chaos bench buf-lint buf-lint-if-available clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# constraints.txt pins what the generated code and the checks were made with,
	# so a clean clone regenerates protobuf code byte for byte.
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/python -m shared.stack

# The system doing its job on a synthetic month (docs/cli.md); DEMO_ARGS=--serve keeps
# the stack serving afterwards, e.g. make demo DEMO_ARGS="--seed 7 --serve".
demo: $(STAMP)
	$(BIN)/python -m services.cli.demo $(DEMO_ARGS)

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

check-protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py --check

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy shared services bench

# The console's browser test (tests/console/test_browser.py) drives Debian's chromium
# through Playwright's Python package; a clean machine gets chromium from apt here
# (never a browser download of Playwright's own).
install-browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the console's browser test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

pytest: $(STAMP) install-browser
	$(BIN)/python -m pytest

test: lint typecheck check-protos buf-lint-if-available pytest

# The fuzzed contract run long: FUZZ_EXAMPLES generated requests per RPC (the suite runs
# a few); the summary (requests per RPC, codes, findings) goes to .clearhouse/fuzz-summary.json.
FUZZ_EXAMPLES ?= 2000
fuzz: $(STAMP)
	CLEARHOUSE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/test_fuzz_contract.py -q -s

# Seeded fault injection against the services as separate processes (docs/chaos.md):
# SEEDS seeds from FIRST_SEED; the report goes to .clearhouse/chaos-report.json.
SEEDS ?= 1
FIRST_SEED ?= 1
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --seeds $(SEEDS) --first-seed $(FIRST_SEED) $(CHAOS_ARGS)

# Every benchmark and ONE table of figures, targets and same-run baselines (bench/README.md);
# BENCH_ARGS=--quick: small sizes, for development.
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

buf-lint:
	npx --yes @bufbuild/buf@1.47.2 lint

# buf comes from npm; where there is no npm the contracts are still compiled and
# drift-checked by protoc, so the lint step says so instead of failing.
buf-lint-if-available:
	@if command -v npx >/dev/null 2>&1; then $(MAKE) --no-print-directory buf-lint && echo "buf lint: ok"; \
	else echo "buf lint: npx not found, not run"; fi

clean:
	rm -rf $(VENV) .clearhouse .pytest_cache .mypy_cache .ruff_cache

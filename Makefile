# modelops: `make up` runs the embedded stack, `make test` runs the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install tools up test lint typecheck unit integration clean reset

# The venv is (re)built when pyproject.toml changes. torch is pinned to the CPU build that pip
# finds on this machine's disk; never let it float.
$(STAMP): pyproject.toml
	@echo ">> step: create the virtual environment in $(VENV) and install pinned dependencies (about 2 minutes the first time)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --progress-bar on -e '.[all]'
	@touch $(STAMP)

install: $(STAMP)

# promtool (Debian's prometheus package) for the offline checks of deploy/ (kubectl comes as a wheel).
tools:
	@command -v promtool >/dev/null || { \
		echo ">> step: install promtool (Debian package prometheus)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

up: install
	$(BIN)/modelops up

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy modelspec tritonio servers registry deployer gateway modelops benchmarks

unit: install
	$(BIN)/pytest -m "not integration" -q

integration: install
	$(BIN)/pytest -m integration -q

test: install tools lint typecheck
	$(BIN)/pytest -q

reset: install
	$(BIN)/modelops reset --yes

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

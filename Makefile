# BENTOML_DO_NOT_TRACK, RAY_USAGE_STATS_ENABLED: nothing the project starts may phone home.
export BENTOML_DO_NOT_TRACK := True
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 (CPU build) lies in /opt/wheels on the project machines; elsewhere pip finds it on PyPI.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: setup serve test lint elu-tax bench bento wheel triton prometheus clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(FIND_LINKS) -e ".[train,dev,bench,distributed]"
	touch $@

setup: $(VENV)/.installed

serve: setup
	$(BIN)/bentoml serve . --host $${HOST:-0.0.0.0} --port $${PORT:-3000}

# Debian's prometheus package (promtool + a real server) for tests/deploy; needs root, as in CI.
prometheus:
	@sh deploy/install-prometheus.sh || echo "prometheus not installed (not root?): tests/deploy will skip"

test: setup prometheus
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

elu-tax: setup
	$(BIN)/eluserve elu-tax

bench: setup
	$(BIN)/eluserve bench

# The installable product: dist/eluserve-<version>-py3-none-any.whl (package + default model, no torch).
wheel: setup
	rm -f dist/eluserve-*.whl
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .

bento: wheel
	$(BIN)/bentoml build

# PyTriton pins numpy<2, so the Triton baseline of `eluserve bench` lives in its own virtualenv.
triton:
	$(PYTHON) -m venv .cache/triton-venv
	.cache/triton-venv/bin/pip install --quiet -r load_tests/requirements-triton.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache dist build

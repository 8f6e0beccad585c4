# BENTOML_DO_NOT_TRACK: nothing the project starts may phone home.
export BENTOML_DO_NOT_TRACK := True
export PYTHONUNBUFFERED := 1

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch==2.13.0 (CPU build) lies in /opt/wheels on the project machines; elsewhere pip finds it on PyPI.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)

.PHONY: setup serve test lint bench elu-tax clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(FIND_LINKS) -e ".[cpu,train,dev]"
	touch $@

setup: $(VENV)/.installed

serve: setup
	$(BIN)/bentoml serve . --host $${HOST:-0.0.0.0} --port $${PORT:-3000}

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

elu-tax: setup
	$(BIN)/eluserve elu-tax

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# BENTOML_DO_NOT_TRACK, RAY_USAGE_STATS_ENABLED: nothing the project starts may phone home.
export BENTOML_DO_NOT_TRACK := True
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The locks (`make lock`): every package at the release CI tests, for the whole dev/CI install and for the
# serving install the Bento ships (a subset of the first, at the same versions).
LOCK := requirements/dev.txt
SERVING_LOCK := requirements/serving.txt
# The lock's torch is the CPU build, 2.13.0+cpu: in /opt/wheels on the project machines, elsewhere on
# PyTorch's CPU index (PyPI's torch is the CUDA build, which pulls GBs of nvidia-* wheels).
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,--extra-index-url https://download.pytorch.org/whl/cpu)

.PHONY: setup lock serve test lint lint-imports elu-tax bench bento wheel triton prometheus wrk browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet $(FIND_LINKS) -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# Re-resolve the locks from pyproject.toml's ranges: a release already locked stays unless the ranges
# rule it out; `make lock UPGRADE=1` moves everything to the newest releases the ranges allow (then
# run the tests: tests/service/runtime/test_compat.py says which patch's target changed).
lock: setup
	$(BIN)/uv pip compile --quiet pyproject.toml --extra train --extra dev --extra bench --extra distributed \
		$(FIND_LINKS) --python $(BIN)/python --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) \
		-o $(LOCK)
	$(BIN)/uv pip compile --quiet pyproject.toml -c $(LOCK) --python $(BIN)/python \
		--custom-compile-command "make lock" -o $(SERVING_LOCK)

serve: setup
	$(BIN)/bentoml serve . --host $${HOST:-0.0.0.0} --port $${PORT:-3000}

# Debian's prometheus package (promtool + a real server) for tests/deploy; needs root, as in CI.
prometheus:
	@sh deploy/install-prometheus.sh || echo "prometheus not installed (not root?): tests/deploy will skip"

# wrk (Debian package): the native HTTP client `eluserve bench` drives the service with; needs root.
wrk:
	@command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk) || echo "wrk not installed (not root?): bench runs --client loadgen only"

# Debian's chromium + its driver: the real browser tests/service/test_page.py drives the page at GET /
# with (through Selenium, offline); needs root.
browser:
	@(command -v chromium >/dev/null && command -v chromedriver >/dev/null) || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
		echo "chromium not installed (not root?): tests/service/test_page.py will skip"

# CI's stages, in order, each its own run so that a failure names its stage: lint, the fast loop
# (in-process tests), then the integration tests (they start servers and commands; tests/process_guard.py
# holds every test to its marker) with their 20 slowest durations printed. A stage that fails stops the
# run non-zero; pytest's exit 5 (the stage selected no tests) is not a failure.
test: setup
	@echo "== stage 1/3: lint (ruff check, ruff format --check, lint-imports)"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory lint-imports
	@$(MAKE) --no-print-directory test-fast
	@$(MAKE) --no-print-directory test-integration

.PHONY: test-fast test-integration
test-fast: setup
	@echo "== stage 2/3: fast tests (pytest -m 'not integration')"
	$(BIN)/pytest -q -m "not integration" || [ $$? -eq 5 ]

test-integration: setup prometheus wrk browser
	@echo "== stage 3/3: integration tests (pytest -m integration)"
	$(BIN)/pytest -q -m integration --durations=20 || [ $$? -eq 5 ]

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory lint-imports

# The [tool.importlinter] contracts in pyproject.toml. import-linter finds a package's modules by walking
# its folder, and eluserve.service/.export/.models live outside eluserve/ (package-dir), so it runs in a
# tree of symlinks laid out as the installed package, made from [tool.setuptools.package-dir].
IMPORT_GRAPH := build/import-graph
define IMPORT_GRAPH_TREE
import pathlib, shutil, tomllib
root = pathlib.Path.cwd()
tree = root / "$(IMPORT_GRAPH)"
shutil.rmtree(tree, ignore_errors=True)
folders = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
for package, folder in sorted(folders.items()):
    target = tree.joinpath(*package.split("."))
    if package == "eluserve":
        target.mkdir(parents=True)
        for entry in (root / folder).iterdir():
            if entry.name != "__pycache__":
                (target / entry.name).symlink_to(entry)
    else:
        target.symlink_to(root / folder)
(tree / "load_tests").symlink_to(root / "load_tests")
endef
export IMPORT_GRAPH_TREE

lint-imports: setup
	$(BIN)/python -c "$$IMPORT_GRAPH_TREE"
	cd $(IMPORT_GRAPH) && $(CURDIR)/$(BIN)/lint-imports $(CURDIR)/pyproject.toml

elu-tax: setup
	$(BIN)/eluserve elu-tax

bench: setup wrk
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

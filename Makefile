# The two commands of the README:
#   make demo   the whole pipeline on the synthetic demo cohort (+ bert/fsaverage where present), CPU
#   make test   the test suite (what CI runs through .ci/run)
# Both create .venv/ on first use and install the pinned dependencies into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
# Re-install when the dependency declarations change.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements/constraints.txt | sha1sum | cut -c1-12)
PIP := $(BIN)/python -m pip --disable-pip-version-check
CONSTRAINTS := -c requirements/constraints.txt
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="--durations=25 -x"`.
PYTEST_ARGS ?=
# pytest-xdist workers, each given whole test modules (their module fixtures built once) in the
# order tests/conftest.py sets; the session's shared runs are built once for all of them.
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: demo test test-fast lint format venv clean-results

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# Build prerequisites of PyRadiomics, then its sdist without build isolation.
	$(PIP) install -q $(CONSTRAINTS) numpy versioneer setuptools wheel
	# CPU build of torch (pinned: an unpinned torch pulls the CUDA wheels).
	$(PIP) install -q $(CONSTRAINTS) torch
	$(PIP) install -q $(CONSTRAINTS) --no-build-isolation pyradiomics
	$(PIP) install -q $(CONSTRAINTS) -e ".[dev,slurm]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --report results/report.html

test: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check Snakefile rules/
	$(BIN)/snakemake --lint
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/snakefmt Snakefile rules/

clean-results:
	rm -rf results .snakemake

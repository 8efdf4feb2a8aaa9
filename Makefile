PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
CONSTRAINTS := benchmarks/constraints.txt

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)

$(VENV)/.installed-demo: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[experiments]"
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[test]"
	touch $@

# The constraints file pins torch so that the peers' requirements never pull another torch build.
$(VENV)/.installed-bench: $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/pip install -q -c $(CONSTRAINTS) -e ".[test,benchmark]"
	touch $@

demo: $(VENV)/.installed-demo
	$(BIN)/natgrad reproduce --quick

test: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -n 2

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/structured_vs_peers.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

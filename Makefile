# torchslim: two commands on a fresh machine — `make demo` and `make test` (each sets up first if needed).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.torchslim-setup-v1
DEMO_OUT ?= out/demo

.PHONY: setup demo test test-slow bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt scripts/setup.sh
	bash scripts/setup.sh "$(PY)" "$(VENV)"
	touch $(STAMP)

demo: setup
	$(BIN)/torchslim compress --model resnet-fmnist --recipe examples/recipes/demo.yaml --report-dir $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python -m benchmarks.ptq_vs_ort

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache

# torchslim: two commands on a fresh machine — `make demo` and `make test` (each sets up first if needed).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two setup levels: the demo needs the runtime and data packages; the tests also need the NLP and dev tools.
DEMO_STAMP := $(VENV)/.torchslim-demo-v1
FULL_STAMP := $(VENV)/.torchslim-full-v1
SETUP_DEPS := pyproject.toml constraints.txt scripts/setup.sh
DEMO_OUT ?= out/demo

.PHONY: setup demo test test-slow bench lint clean

setup: $(FULL_STAMP)

$(DEMO_STAMP): $(SETUP_DEPS)
	bash scripts/setup.sh "$(PY)" "$(VENV)" data
	touch $(DEMO_STAMP)

$(FULL_STAMP): $(SETUP_DEPS)
	bash scripts/setup.sh "$(PY)" "$(VENV)" data,nlp,lowrank,search,dev
	touch $(DEMO_STAMP) $(FULL_STAMP)

demo: $(DEMO_STAMP)
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

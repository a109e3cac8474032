# torchslim: two commands on a fresh machine — `make demo` and `make test` (each sets up first if needed).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two setup levels: the demo needs the runtime and data packages; the tests also need the NLP and dev tools.
DEMO_STAMP := $(VENV)/.torchslim-demo-v1
FULL_STAMP := $(VENV)/.torchslim-full-v1
BENCH_STAMP := $(VENV)/.torchslim-bench-v1
SETUP_DEPS := pyproject.toml constraints.txt scripts/setup.sh
DEMO_OUT ?= out/demo

.PHONY: setup demo test test-slow bench bench-full lint clean

setup: $(FULL_STAMP)

$(DEMO_STAMP): $(SETUP_DEPS)
	bash scripts/setup.sh "$(PY)" "$(VENV)" data
	touch $(DEMO_STAMP)

$(FULL_STAMP): $(SETUP_DEPS)
	bash scripts/setup.sh "$(PY)" "$(VENV)" data,nlp,lowrank,search,dev
	touch $(DEMO_STAMP) $(FULL_STAMP)

# Benchmarks also install the peer tools they compare against (torchao, NNCF, Torch-Pruning).
$(BENCH_STAMP): $(SETUP_DEPS)
	bash scripts/setup.sh "$(PY)" "$(VENV)" data,nlp,lowrank,search,dev,peers
	touch $(DEMO_STAMP) $(FULL_STAMP) $(BENCH_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/torchslim compress --model resnet-fmnist --recipe examples/recipes/demo.yaml --report-dir $(DEMO_OUT)

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

BENCHMARKS := ptq_vs_ort mobilenet_ptq minilm_int8 low_bit_weights zeroq qlstm calibration_cost lsbq_qat \
  channel_pruning tp_compare mobilenet_prune pruning_methods pruning_dcp_npn pruning_in_training apqnn leo \
  minilm_prune distill_cnn residual_kd lfme self_distill kd_diagnostics minilm_distill twinbert

bench: $(BENCH_STAMP)  ## every benchmark in its --quick mode (minutes each); `make bench-full` for the full runs
	set -e; for b in $(BENCHMARKS); do $(BIN)/python -m benchmarks.$$b --quick; done

bench-full: $(BENCH_STAMP)
	set -e; for b in $(BENCHMARKS); do $(BIN)/python -m benchmarks.$$b; done

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache

# Two commands on a fresh machine: `make demo` serves the demo repository, `make test` runs the tests.
# Each creates the virtualenv it needs on first use: `make demo` a small one with the base package
# only (.venv-demo, ONNX support), `make test` the full one with every platform and test tool (.venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_VENV := .venv-demo
DEMO_BIN := $(DEMO_VENV)/bin
DEMO_STAMP := $(DEMO_VENV)/.installed
DEMO_DIR := demo-models
# `make demo PORT=9501 GRPC_PORT=9500` moves both listeners
PORT ?= 8501
GRPC_PORT ?= 8500

.PHONY: demo test lint format bench protos

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# every platform's extra but [tensorflow]: `tensorflow` already comes with the test extra
	$(BIN)/pip install --quiet -e '.[test,torch,sklearn,xgboost,lightgbm,lookup]'
	touch $(STAMP)

# The demo serves ONNX models only: the base package is all it needs (no torch, no TensorFlow).
$(DEMO_STAMP): pyproject.toml
	@echo "== installing pyserving (base package only) into $(DEMO_VENV)"
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_BIN)/pip install --progress-bar on -e .
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(DEMO_BIN)/pyserving demo $(DEMO_DIR)
	@echo "== demo models in $(CURDIR)/$(DEMO_DIR) (config: examples/demo.yaml)"
	@echo "== REST on http://localhost:$(PORT)  gRPC on localhost:$(GRPC_PORT)  (Ctrl-C stops)"
	@echo "== try: curl -s localhost:$(PORT)/v1/models/mlp"
	$(DEMO_BIN)/pyserving serve --model_config_file=examples/demo.yaml \
	    --rest_api_port=$(PORT) --port=$(GRPC_PORT)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	# settings in pyproject.toml [tool.mypy]: strict on core/, serving/, protocols/
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# `make bench BENCH_ARGS='--duration 2 --peers floor-starlette,mlserver'`; see benchmarks/bench.py
bench: $(STAMP)
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

protos: $(STAMP)
	$(BIN)/python scripts/gen_protos.py

# Two commands on a fresh machine: `make demo` serves the demo repository, `make test` runs the tests.
# Each creates the virtualenv it needs (.venv) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8501

.PHONY: demo test lint format bench protos

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# every platform's extra but [tensorflow]: `tensorflow` already comes with the test extra
	$(BIN)/pip install --quiet -e '.[test,torch,sklearn,xgboost,lightgbm,lookup]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pyserving serve --demo --rest_api_port=$(PORT)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
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

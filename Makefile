# lightfit: `make train` and `make test` work as the first command on a fresh clone.
# They create .venv, install PyTorch and lightfit once (stamp files), then run.
#
#   make train ARGS="loop=manual trainer.max_epochs=3"    Hydra overrides go in ARGS (= lightfit train ...)
#   make bench ARGS="--quick"                              a short benchmark run (see bench/__init__.py)
#   make kill-test ARGS="--loops explicit --kills 8"       kill, resume, compare (see scripts/kill_test.py)
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cpu   pick a PyTorch build
#   make export CKPT=... FORMAT=onnx                      the model as ONNX or TorchScript (= lightfit export)
#   make serve CKPT=... PORT=8000                          the model behind HTTP (= lightfit serve)
#   make plot RUN=outputs/<date>/<time>                   loss and accuracy curves as a PNG
#   make new-project NAME=<package> DEST=<folder>         a new project from template/ (= lightfit new)
#   make compare RUNS="multirun/<date>/<time>"             runs ranked side by side, their curves in one PNG
#   make docs                                             the documentation site, into site/

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
ARGS ?=
CKPT ?=
INPUT ?=
OUTPUT ?=
FORMAT ?=
PORT ?=
RUN ?=
RUNS ?=
NAME ?=
DEST ?=

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev
STAMP_PLOT := $(VENV)/.installed-plot
STAMP_DOCS := $(VENV)/.installed-docs
# MkDocs 1.6 prints a notice about MkDocs 2 on every build; it says nothing about this site.
export NO_MKDOCS_2_WARNING := 1

.DEFAULT_GOAL := help
.PHONY: help install install-dev train eval predict export serve plot compare mlflow-ui new-project test test-all bench docs docs-serve kill-test lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)

# PyTorch first, so that pip does not pick a build for us when lightning asks for torch.
$(VENV)/.installed-torch: | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	@touch $@

$(STAMP_RUN): pyproject.toml $(VENV)/.installed-torch
	$(PIP) install -e .
	@touch $@

# The dev install includes the plot extra, so that the test suite can check `make plot`.
$(STAMP_DEV): pyproject.toml $(VENV)/.installed-torch
	$(PIP) install -e ".[dev,plot]"
	@touch $(STAMP_RUN) $(STAMP_PLOT) $@

$(STAMP_PLOT): pyproject.toml $(STAMP_RUN)
	$(PIP) install -e ".[plot]"
	@touch $@

# The benchmark's optional extra (Keras 3, for its fit() case); the bench skips Keras without it.
$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-torch
	$(PIP) install -e ".[bench]" || echo "Keras not installed: make bench will skip its case"
	@touch $@

# The docs extra: MkDocs Material and mkdocstrings, which reads the source without importing it.
$(STAMP_DOCS): pyproject.toml $(STAMP_RUN)
	$(PIP) install -e ".[docs]"
	@touch $@

install: $(STAMP_RUN) ## install PyTorch and lightfit into .venv (once)

install-dev: $(STAMP_DEV) ## install lightfit with the test and lint tools

train: $(STAMP_RUN) ## train with Hydra overrides: make train ARGS="loop=manual task=regression"
	$(PY) -m lightfit train $(ARGS)

# Empty CKPT/INPUT/OUTPUT are left out, so that Hydra names the missing value.
eval: $(STAMP_RUN) ## test metrics of a checkpoint: make eval CKPT=outputs/.../checkpoints/best.ckpt
	$(PY) -m lightfit evaluate $(if $(CKPT),ckpt_path=$(CKPT)) $(ARGS)

predict: $(STAMP_RUN) ## predictions for a .npy: make predict CKPT=... INPUT=x.npy OUTPUT=probs.npy
	$(PY) -m lightfit predict $(if $(CKPT),ckpt_path=$(CKPT)) $(if $(INPUT),input=$(INPUT)) $(if $(OUTPUT),output=$(OUTPUT)) $(ARGS)

# FORMAT=onnx needs the export extra (pip install -e ".[export]"); torchscript needs nothing more.
export: $(STAMP_RUN) ## the model as ONNX or TorchScript: make export CKPT=... FORMAT=onnx|torchscript
	$(PY) -m lightfit export $(if $(CKPT),ckpt_path=$(CKPT)) $(if $(FORMAT),format=$(FORMAT)) $(if $(OUTPUT),output=$(OUTPUT)) $(ARGS)

# The serve extra (pip install -e ".[serve]"): LitServe. PORT=8000 by default; this machine only.
serve: $(STAMP_RUN) ## the model behind HTTP: make serve CKPT=... (POST /predict, GET /health)
	$(PY) -m lightfit serve $(if $(CKPT),ckpt_path=$(CKPT)) $(if $(PORT),port=$(PORT)) $(ARGS)

plot: $(STAMP_PLOT) ## curves (+ confusion matrix) of a run: make plot RUN=outputs/<date>/<time> (default: latest)
	$(PY) -m lightfit plot $(RUN)

compare: $(STAMP_PLOT) ## rank runs, with what differed: make compare RUNS="multirun/<date>/<time>" ARGS="--output t.csv"
	$(PY) -m lightfit compare $(RUNS) $(ARGS)

# The store that logger=mlflow writes by default: mlflow.db in the folder you train from.
mlflow-ui: $(STAMP_RUN) ## the MLflow UI on the runs of logger=mlflow (pip install 'lightfit[mlflow]'), port 5000
	@$(PY) -c "import mlflow" 2>/dev/null || { echo "MLflow is not installed: $(PIP) install 'lightfit[mlflow]'"; exit 2; }
	$(PY) -m mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db" $(ARGS)

# copier renders template/ (the template extra); ARGS="--defaults" takes the other answers' defaults.
new-project: $(STAMP_RUN) ## a new project: make new-project NAME=<package> DEST=<folder> (lightfit new)
	@$(PY) -c "import copier" 2>/dev/null || $(PIP) install -e ".[template]"
	$(PY) -m lightfit new "$(NAME)" "$(DEST)" $(ARGS)

test: $(STAMP_DEV) ## the test suite without the slow tests (about 2 minutes on 2 cores)
	$(PY) -m pytest -m "not slow" $(ARGS)

# copier (the template extra) for the template's tests, which generate projects and run them.
test-all: $(STAMP_DEV) ## the whole test suite, slow tests included (install the extras to run theirs)
	@$(PY) -c "import copier" 2>/dev/null || $(PIP) install -e ".[template]"
	$(PY) -m pytest $(ARGS)

bench: $(STAMP_RUN) $(VENV)/.installed-bench ## benchmark, writes bench/results.md: make bench ARGS="--quick"
	$(PY) -m bench $(ARGS)

docs: $(STAMP_DOCS) ## build the documentation site into site/ (a warning fails the build)
	$(PY) -m mkdocs build --strict

docs-serve: $(STAMP_DOCS) ## serve the documentation at http://127.0.0.1:8000, rebuilt on every change
	$(PY) -m mkdocs serve

kill-test: $(STAMP_RUN) ## kill training at random moments, resume, compare: make kill-test ARGS="--quick"
	$(PY) scripts/kill_test.py $(ARGS)

lint: $(STAMP_DEV) ## ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP_DEV) ## fix what ruff can fix, format the code
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean: ## remove caches and run outputs (keeps .venv)
	rm -rf outputs multirun site lightning_logs .pytest_cache .ruff_cache build dist src/*.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

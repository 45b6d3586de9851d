# One command runs what CI runs: `make check`.
PY ?= .venv/bin/python

# The CPU build of torch, asked for by its local version: on Linux, PyPI's plain `torch` is the CUDA build (its
# cuda-toolkit and nvidia-* wheels are several GB). `+cpu` wheels live on PyTorch's CPU index, and in any wheel
# folder pip is already configured with (`find-links`): that folder is tried first, offline, and the index only if
# it has no such wheel. GPU machines (CUDA 12.8 build, NVIDIA driver >= 570):
#   make install TORCH=torch==2.13.0+cu128 TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install test-deps lint typecheck test check bench

install:
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-index --no-deps "$(TORCH)" 2>/dev/null \
		|| $(PY) -m pip install -q "$(TORCH)" --extra-index-url $(TORCH_INDEX)
	$(PY) -m pip install -q -e ".[dev]"

test-deps:
	bash scripts/test-deps.sh

lint:
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench

typecheck:
	$(PY) -m mypy

test: test-deps
	$(PY) -m pytest -q

check: lint typecheck test

bench:
	$(PY) bench/serving.py
	$(PY) bench/png.py

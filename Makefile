# One command runs what CI runs: `make check`.
PY ?= .venv/bin/python

# The CPU build of torch, asked for by its local version: on Linux, PyPI's plain `torch` is the CUDA build (its
# cuda-toolkit and nvidia-* wheels are several GB). `+cpu` wheels live on PyTorch's CPU index, and in any wheel
# folder pip is already configured with (`find-links`): that folder is tried first, offline, and the index only if
# it has no such wheel. GPU machines (CUDA 12.8 build, NVIDIA driver >= 570):
#   make install TORCH=torch==2.13.0+cu128 TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH ?= torch==2.13.0+cpu
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install test-deps lint typecheck test-fast test test-gpu check bench

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

# Test tiers (docs/architecture.md, "Tests"):
# - test-fast: in this process, no PostgreSQL, no `reimagine serve`, no browser; under a minute on two cores.
# - test: everything CI runs (`make check`): plus PostgreSQL, S3, `serve` subprocesses (kill -9, drain, several
#   processes), the official clients, the browser, bench smoke runs, the adversarial module.
# - test-gpu: the `gpu`-marked tests, on a CUDA machine (skipped elsewhere).
FAST_TESTS = tests/test_messages.py tests/test_wire.py tests/test_schemas.py tests/test_worker_loop.py \
	tests/test_outputs.py tests/test_boundaries.py tests/store tests/inproc tests/webhooks tests/files \
	tests/api/test_hub.py tests/api/test_enqueuer.py

test-fast:
	$(PY) -m pytest -q -m "not slow and not gpu" -k "not postgresql" $(FAST_TESTS)

test: test-deps
	$(PY) -m pytest -q

test-gpu:
	$(PY) -m pytest -q -m gpu

check: lint typecheck test

bench:
	$(PY) bench/serving.py
	$(PY) bench/png.py

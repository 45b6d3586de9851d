# One command runs what CI runs: `make check`.
PY ?= .venv/bin/python

.PHONY: install test-deps lint typecheck test check bench

install:
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
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

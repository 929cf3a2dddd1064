# Targets are what CI and the README call.
PY := .venv/bin/python
.PHONY: setup demo test lint bench serve check-cuda-install gpu-smoke

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/rectrain run examples/quickstart.yaml

test: setup
	./scripts/setup-test-tools.sh
	$(PY) -m pytest -q --durations=30 tests

# ruff (lint + format) and mypy over the packages; CI runs it before the tests (fast first)
lint: setup
	.venv/bin/ruff check cli api services trainer bench tests examples scripts
	.venv/bin/ruff format --check cli api services trainer bench tests examples scripts
	$(PY) -m mypy cli api services trainer bench

bench: setup
	.venv/bin/rectrain bench

serve: setup
	.venv/bin/rectrain serve

# CUDA install: pins agree and resolve for Linux x86-64 (no GPU needed; PyPI access)
check-cuda-install:
	$(PY) scripts/check_cuda_install.py

# On a GPU machine: install check, 1-GPU quickstart job (in-process and Ray), 2-GPU job
# when two are visible, rectrain bench --device cuda --no-scaling. Skips GPU parts without one.
gpu-smoke: setup
	PYTHONPATH=$(CURDIR) $(PY) scripts/gpu_smoke.py

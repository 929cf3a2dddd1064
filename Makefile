# Targets are what CI and the README call.
PY := .venv/bin/python
.PHONY: setup demo test lint bench serve

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/rectrain run examples/quickstart.yaml

test: setup
	./scripts/setup-test-tools.sh
	$(PY) -m pytest -q tests

lint: setup
	.venv/bin/ruff check api services trainer bench tests examples
	.venv/bin/ruff format --check api services trainer bench tests

bench: setup
	.venv/bin/rectrain bench

serve: setup
	.venv/bin/rectrain serve

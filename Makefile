# Two commands for a newcomer: `make demo` and `make test`. Each does the setup it needs.
PY := .venv/bin/python

.PHONY: setup test demo bench lint

setup:
	@bash tools/setup.sh

test: setup
	$(PY) -m pytest

demo: setup
	$(PY) tools/demo.py

bench: setup
	$(PY) benchmarks/attention_bench.py
	$(PY) benchmarks/sampling_bench.py

lint: setup
	$(PY) -m ruff check .

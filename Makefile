# Two commands for a newcomer: `make demo` and `make test`. Each does the setup it needs.
# Without a ComfyUI checkout (and no network to clone one) `make test` still runs the
# pure tests and reports the host tests as skipped, with how to provide a host.
VENV := $(or $(ENFOQUE_VENV),.venv)
PY := $(VENV)/bin/python

.PHONY: setup test demo bench lint link compat

setup:
	@bash tools/setup.sh

test: setup
	$(PY) -m pytest

demo: setup
	$(PY) tools/demo.py

bench: setup
	$(PY) benchmarks/attention_bench.py
	$(PY) benchmarks/sampling_bench.py
	$(PY) benchmarks/map_quality.py

lint: setup
	$(PY) -m ruff check .

# Opt-in: link this clone into the host checkout's custom_nodes/enfoque, to try the
# pack in that ComfyUI by hand. Tests and the demo never need it.
link:
	@ENFOQUE_LINK=1 bash tools/setup.sh

# Not part of CI (downloads a CUDA build of each torch, 25-40 min on 2 cores): the torch matrix,
# pure tests + sampling on the pinned ComfyUI per torch, written to docs/compat.md.
# Arguments: `make compat TORCH="2.5 2.15"` runs those only (the table keeps the other rows).
compat:
	@bash tools/torch_matrix.sh $(TORCH)

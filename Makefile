# Each target bootstraps .venv itself; re-running is a no-op once installed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/basinlab run configs/mnist/demo.yaml --resume

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m pip install -c constraints.txt -e ".[bench]"
	$(BIN)/python benchmarks/batching.py
	$(BIN)/python benchmarks/mnist_recipe_speed.py
	$(BIN)/python benchmarks/optimizer_step.py
	$(BIN)/python benchmarks/soap_muon.py
	$(BIN)/python benchmarks/distributed_shampoo.py
	$(BIN)/python benchmarks/fsdp2.py
	$(BIN)/python benchmarks/sparsity.py
	$(BIN)/python benchmarks/text_hooks.py
	$(BIN)/python benchmarks/text_cache.py --megabytes 2 20 100
	$(BIN)/python benchmarks/text_loader.py

clean:
	rm -rf $(VENV) runs

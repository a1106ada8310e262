# Set-up and entry points. `make demo` and `make test` work on a fresh machine with Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= torch,train,test,plot,ptychodus
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: demo test bench dataset clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml requirements/cpu.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -c requirements/cpu.txt -e '.[$(EXTRAS)]'
	touch $@

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_memmap.py

dataset: $(STAMP)
	$(BIN)/python -m ptycho.simulate --preset embedded --out datasets/sim_small.npz

clean-venv:
	rm -rf $(VENV)

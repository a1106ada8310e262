# Set-up and entry points. `make demo` and `make test` work on a fresh machine with Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= torch,train,test,plot,ptychodus
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: demo test bench bench-ptychi dataset pretrained object-network clean-venv

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

# The iterative baseline (benchmarks/README.md): Pty-chi's dependencies, then ptychi itself without
# torchvision (benchmarks/bench_ptychi.py stands in for the one class it uses). Not part of test or CI.
bench-ptychi: $(STAMP)
	$(BIN)/python -m pip install -q -c requirements/cpu.txt -r requirements/bench-ptychi.txt
	$(BIN)/python -m pip install -q --no-deps ptychi==2.2.0
	$(BIN)/python benchmarks/bench_ptychi.py datasets/sim_small.npz --engines lsqml epie \
		--epochs 1 3 5 10 20 50 --epie-epochs 10 50 200 --json benchmarks/results/bench_ptychi.json

dataset: $(STAMP)
	$(BIN)/python -m ptycho.simulate --preset embedded --out datasets/sim_small.npz --overwrite

clean-venv:
	rm -rf $(VENV)

# The shipped model, rebuilt from nothing (ptycho_torch/pretrained/build.py: corpus, training, export); rerun to resume.
# About an hour of one CPU core (the record beside the weights says how long it took).
pretrained: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m ptycho_torch.pretrained.build --threads 1

# The shipped whole-object network (ptycho_torch/pretrained/build_object_network.py: the same corpus refined, then trained);
# rerun to resume.
object-network: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m ptycho_torch.pretrained.build_object_network --threads 1

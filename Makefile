# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
# workflow jobs call the `medgen` command of this environment
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test install clean-demo bench

$(BIN)/medgen: pyproject.toml constraints.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned, so that pip takes the CPU build instead of a multi-GB CUDA one
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e ".[workflow,test]"
	touch $(BIN)/medgen

install: $(BIN)/medgen

demo: install
	$(BIN)/snakemake --cores $(CORES) --configfile configs/default.yaml --rerun-incomplete --printshellcmds
	@echo "Demo finished. Report: $(abspath results/report.html)"

# one test process per CPU (pytest-xdist): the end-to-end workflow tests run beside the unit tests
test: install
	$(BIN)/python -m pytest -q -n auto tests

bench: install
	$(BIN)/python benchmarks/bench_phantom.py
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_preprocess.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_translation.py --quick

clean-demo:
	rm -rf results .snakemake

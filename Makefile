# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench bench-gpu clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/nervi-hpc submit jobs/examples/demo.yaml --wait

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

bench: $(STAMP)  # every benchmark, printing its figures (tens of minutes on 2 CPU cores)
	for b in render ingest train decode codec entropy viewer baselines; do $(BIN)/python benchmarks/$$b.py || exit 1; done

bench-gpu: $(STAMP)  # the GPU check (≈ 5 min on one GPU; CPU-only parts elsewhere): bench/gpu.json
	$(BIN)/python benchmarks/gpu.py --json bench/gpu.json

clean:
	rm -rf $(VENV) out

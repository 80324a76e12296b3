# Two commands on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it once; the stamp file
# makes a second call install nothing (it reinstalls only when pyproject.toml changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATA := data/shapes

.PHONY: demo test lint bench gpu-check install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/detrdistill data synth --out $(DEMO_DATA) --train 64 --val 16 --image-size 128 --seed 0 --force
	$(BIN)/detrdistill data check $(DEMO_DATA) --split val --size 128 --max-size 213
	$(BIN)/detrdistill compare --teacher experiments/quickstart.yaml \
		experiments/quickstart_student.yaml experiments/quickstart_distill.yaml

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# every benchmark at CPU-sized defaults (~25 min on 2 cores); tables into bench/results and README
bench: $(STAMP)
	$(BIN)/python -m bench

# on a machine with a CUDA device: the gpu-marked tests, then the step-time and orchestration
# benchmarks on the GPU (results into bench/results)
gpu-check: $(STAMP)
	$(BIN)/python -m pytest -m gpu -v
	$(BIN)/python -m bench.step_time --device cuda
	$(BIN)/python -m bench.orchestration --use-gpu

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) data .pytest_cache .ruff_cache

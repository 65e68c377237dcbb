# Two commands a new user needs (see README):
#   make demo   set up .venv, fetch sample photos, train SRResNet → SRGAN on 2 local Ray workers
#   make test   set up .venv and run the test suite (make test-fast: the edit loop, no Ray clusters)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The tested torch pair (a CUDA 13 build; runs on CPU when there is no GPU).
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test test-fast lint bench clean gpu-check gpu-check-cpu

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[dev,demo,export]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m srgan_dist.cli sample-data --out data/sample
	$(PY) launch.py --config configs/demo.yaml --name demo --resume

# Two test workers: run one by one, the tests left the 2 cores 40 % idle (waiting on Ray's polls
# and process starts); tests/conftest.py keeps each cluster and each module's fixtures on one worker.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup --durations=15

# Everything but the tests marked `slow` (Ray worker groups, local clusters, servers).
test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# Benchmarks (not tests): each appends its table to BENCHMARKS.md with command, machine and date.
bench: $(STAMP)
	$(PY) bench/data_throughput.py
	$(PY) bench/train_scaling.py --write
	$(PY) bench/upscale_throughput.py

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache

# The GPU acceptance run on one CUDA GPU (bench/gpu_check.py: a PASS/FAIL line per check, every
# number in gpu_check.json), and the same checks in CPU mode (tiny sizes; make test runs it too).
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py --json gpu_check.json

gpu-check-cpu: $(STAMP)
	$(PY) bench/gpu_check.py --cpu

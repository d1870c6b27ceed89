# Two commands on a fresh machine:  `make demo` (the main job) and `make test`.
# Both create .venv and install supemb into it on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup test demo bench gpu-check mutation clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Pin torch first: an unpinned install pulls the CUDA build (gigabytes).
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

test: setup
	$(PY) -m pytest -q tests

# The web demo on http://127.0.0.1:7860 (Ctrl-C stops it). Options, e.g.:
#   make demo DEMO_ARGS="--port 8000 --bundle age=path/to/bundle"
demo: setup
	$(VENV)/bin/supemb demo $(DEMO_ARGS)

bench: setup
	$(PY) benchmarks/losses.py

# On a machine with a CUDA GPU: the CUDA tests and the GPU benchmarks (figures for BENCHMARKS.md).
gpu-check: setup
	$(PY) -m pytest -q -m cuda tests
	$(PY) benchmarks/losses.py --device cuda
	$(PY) benchmarks/training.py --device cuda --processes 1 --encoder resnet18 --size 64
	$(PY) benchmarks/training.py --device cuda --processes 1 --kind eeg --n 64 --batch-size 64

# Mutation testing of the neighbour arithmetic, the metrics, the bundle checks and the CLI's argument and
# error handling (about 15 min of one core; not run in CI): mutmut, installed into .venv on first use;
# scores and survivors in docs/mutation.md.
mutation: setup
	$(PY) -c "import mutmut" 2>/dev/null || $(PY) -m pip install --quiet "mutmut>=3.8,<4"
	$(PY) tools/mutation.py --min-score 90 $(MUTATION_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

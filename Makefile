# The two commands of the README: `make demo` (main job) and `make test` (test suite).
# Both create .venv on first use; the stamp re-installs when setup.py changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-quick lint bench venv docs
venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mamba-clip demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q tests

# Everyday development (target: under 3 minutes; 1 min 50 s to 2 min 16 s on 2 cores, load 0.7-1): the unit tests,
# without the tests marked slow (end-to-end or multi-second), the dense-Hessian references (minutes of
# CPU) and the suites that run subprocesses (stock open_clip / clip_benchmark tooling, pip packaging,
# examples, demo, benchmarks); stops at the first failure. The full suite (make test) runs in CI.
QUICK_IGNORE := --ignore=tests/openclip --ignore=tests/test_packaging.py --ignore=tests/test_examples.py \
	--ignore=tests/test_demo.py --ignore=tests/test_benchmarks.py --ignore=tests/test_bench_gpu.py
test-quick: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow" -k "not matches_dense_hessian" $(QUICK_IGNORE) tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) benchmarks/bench_scan.py
	$(PY) benchmarks/bench_towers.py

# the demo, then docs/demo_results.md from its report (the numbers the docs quote)
docs: demo
	$(PY) docs/_generate.py demo_out

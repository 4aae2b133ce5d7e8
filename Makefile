# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp

.PHONY: install demo test bench clean docs demo-results notebooks

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m tflite_retroq.demo --out demo_out

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

# Docs that cannot drift: README blocks are generated from benchmarks/results/*.json (tests/test_readme.py
# fails when they differ); notebooks are re-executed in place so their saved outputs are today's.
demo-results: demo
	cp demo_out/report.json benchmarks/results/demo.json

docs: install
	$(PY) -m benchmarks.docs

notebooks: install
	$(PY) -m benchmarks.notebooks

bench: install
	$(PY) -m benchmarks.calibration_sources

clean:
	rm -rf demo_out .pytest_cache build *.egg-info

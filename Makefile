# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv and installs first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed-stamp

.PHONY: install demo test bench clean

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

bench: install
	$(PY) -m benchmarks.calibration_sources

clean:
	rm -rf demo_out .pytest_cache build *.egg-info

# Two commands do all the set-up on a fresh machine (Python 3.11 + pip):
#   make demo   the main job
#   make test   the test suite
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench install clean audit

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel; a looser pin pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e "./clients/python[cli]" -e ".[engine,service,postgres,gpu,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m alto_client.cli demo

test: $(STAMP)
	$(VENV)/bin/pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# known vulnerabilities of every installed distribution and of the images' pins, from the
# vendored advisory snapshot (deploy/advisories) plus the index's data for latest releases
audit: $(STAMP)
	$(PY) deploy/audit.py --index
	$(PY) deploy/audit.py -r deploy/constraints.txt

bench: $(STAMP)
	$(PY) bench/optim_step.py

clean:
	rm -rf $(VENV)

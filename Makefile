# Two commands do all the set-up on a fresh machine (Python 3.12 + pip):
#   make demo   the main job
#   make test   the test suite
# Python 3.12: from PATH, else pyenv's newest 3.12 (megatron-core >= 0.17 needs it)
PYTHON ?= $(firstword $(foreach p,python3.12 $(sort $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12)),$(shell $(p) -c 'import sys; print("$(p)" if sys.version_info[:2] == (3, 12) else "")' 2>/dev/null)))
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# every pinned wheel is downloaded once per machine (torch's CUDA build and its NVIDIA
# libraries are about 3 GB) and installed from here; fresh clones reuse it
WHEELS ?= $(HOME)/.cache/alto/wheels

.PHONY: demo test lint bench install clean audit lock

$(STAMP): pyproject.toml clients/python/pyproject.toml requirements.lock
	@test -n "$(PYTHON)" || { echo "make: Python 3.12 not found (PATH or ~/.pyenv/versions); set PYTHON=/path/to/python3.12" >&2; exit 1; }
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip download --quiet --no-deps --dest $(WHEELS) -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-index --find-links $(WHEELS) -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e "./clients/python[cli]" -e ".[engine,service,postgres,gpu,dev]"
	$(PY) -m pip check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m alto_client.cli demo

test: $(STAMP)
	$(VENV)/bin/pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# known vulnerabilities of every installed distribution and of the lock, from the
# vendored advisory snapshot (deploy/advisories) plus the index's data for latest releases
audit: $(STAMP)
	$(PY) deploy/audit.py --index
	$(PY) deploy/audit.py -r requirements.lock

# re-resolve every dependency (after editing a pyproject.toml); commit requirements.lock
lock: $(STAMP)
	$(VENV)/bin/uv pip compile requirements.in --python $(PY) --no-emit-package alto-client \
	  --no-emit-package alto-service --no-header --annotation-style line -o requirements.lock

bench: $(STAMP)
	$(PY) bench/optim_step.py

clean:
	rm -rf $(VENV)

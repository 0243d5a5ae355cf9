# The two commands a newcomer needs: `make run` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install bytecode warm run test bench lint format proto clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m hashmatch.server.warm || echo "kernel warm-up failed: the first serve compiles them"
	touch $(STAMP)

# Bytecode for the project's own modules (pip compiles only what it installs into the
# venv): where PYTHONDONTWRITEBYTECODE is set, as on this project's machines, every
# process compiled them from source again, ~0.5 s of CPU per server or CLI start and
# hundreds of such starts in the tests. Up-to-date files are skipped; an edited one is
# recompiled here (or, between runs, in memory by Python as before).
bytecode: install
	$(PY) -m compileall -q -j0 engine indexes server proto bench tests

# numba's compiled kernels, cached beside their sources: install fills the cache so the
# first `make run` (and the tests' first servers) need not compile; run again after a
# pull that changed a kernel (engine/pdq_kernels.py, engine/resample.py, indexes/kernels.py).
warm: install
	$(PY) -m hashmatch.server.warm

run: install bytecode
	$(VENV)/bin/hashmatch serve --data-dir ./hashmatch-data

# One pytest worker per core plus one, a test file each at a time (module fixtures built
# once): about a third of the suite waits (gRPC's reconnect backoff, deadlines, signals,
# subprocesses), so with one worker per core the CPU sat idle a third of the time. On
# 2 cores: 3 workers 556 s, 2 workers 665-700 s (1,699 tests, the same host and hour).
# TEST_WORKERS=0 runs in one process (pdb, -x); `pytest FILE` is serial.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 2) + 1 )))
test: install bytecode
	$(PY) -m pytest $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

bench: install
	$(PY) -m bench all

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

proto: install
	$(PY) -m hashmatch.server.protogen

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info

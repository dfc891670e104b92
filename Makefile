# gridbackupd: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := setup.cfg pyproject.toml $(shell find src twisted -name '*.py' 2>/dev/null)

.PHONY: install run test bench clean

# A normal (non-editable) install: twistd only finds the plugin that way.
$(STAMP): $(SOURCES)
	@echo "make: installing gridbackupd and its dependencies into $(VENV) with pip (the first time takes a minute)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	rm -rf build
	$(BIN)/python -m pip install --quiet '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The daemon in the foreground, on its own embedded grid, backing up example/.
run: install
	$(BIN)/twistd --nodaemon --pidfile= gridbackup --config etc/gridbackup.ini

# Unit tests and real-grid integration tests; the last line is "N passed, N failed".
test: install
	$(BIN)/python .ci/trial_summary.py tests

# Every benchmark in turn (several minutes); docs/PERFORMANCE.md says what each measures.
bench: install
	$(BIN)/python bench/bench_scan.py
	$(BIN)/python bench/bench_upload.py
	$(BIN)/python bench/bench_restore.py
	$(BIN)/python bench/api_browse.py

clean:
	rm -rf $(VENV) run _trial_temp* build src/*.egg-info

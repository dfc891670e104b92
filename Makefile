# gridbackupd: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SOURCES := setup.cfg pyproject.toml $(shell find src twisted -name '*.py' 2>/dev/null) $(shell find src/gridbackupd/console/static -type f 2>/dev/null)

.PHONY: install browser run test bench clean

# A normal (non-editable) install: twistd only finds the plugin that way.
$(STAMP): $(SOURCES)
	@echo "make: installing gridbackupd and its dependencies into $(VENV) with pip (the first time takes a minute)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	rm -rf build
	$(BIN)/python -m pip install --quiet '.[test]'
	@# gridbackup mount needs libfuse 3 and fusermount3 (Debian's fuse3), installed here when missing.
	command -v fusermount3 >/dev/null || { apt-get update -q && apt-get install -y -q fuse3; }
	touch $(STAMP)

install: $(STAMP) browser

# The console's browser tests drive Debian's chromium through chromium-driver
# (a browser download does not work here); without them they are skipped.
browser:
	@if ! command -v chromium >/dev/null || ! test -x /usr/bin/chromedriver; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing chromium and chromium-driver for the console's browser tests (apt-get)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "make: chromium could not be installed: the browser tests will be skipped"; \
	  else \
	    echo "make: no chromium and chromium-driver (apt-get needs root): the browser tests will be skipped"; \
	  fi; \
	fi

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
	$(BIN)/python bench/bench_mount.py

clean:
	rm -rf $(VENV) run _trial_temp* build src/*.egg-info

# The two commands: `make run` starts a working cluster, `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-sqlite test-postgresql lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

fuse3:
	@if ! command -v fusermount3 >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q fuse3 libfuse3-3; \
	  else echo "fuse3 is missing: install it (apt-get install fuse3) for the mount"; fi; fi

run: $(STAMP) fuse3
	$(VENV)/bin/dfs dev-cluster --state .dfs-run --mount mnt

# The suite on SQLite, then everything but the mount again with every master on PostgreSQL
# (a throwaway server in a temporary folder: tests/pgserver.py).
PG_PYTEST_ARGS ?= --ignore=tests/fuse --ignore=tests/conformance
PG_INITDB := $(wildcard /usr/lib/postgresql/*/bin/initdb)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-postgresql

test-sqlite: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-postgresql: $(STAMP)
	@if [ -z "$(PG_INITDB)" ] && [ -z "$$DFS_TEST_PG_URL" ]; then \
	  echo "PostgreSQL pass SKIPPED: no server binaries (apt-get install postgresql) and no DFS_TEST_PG_URL"; \
	else DFS_TEST_DB=postgresql $(VENV)/bin/python -m pytest $(PG_PYTEST_ARGS); fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/transfer.py

clean:
	rm -rf $(VENV) .dfs-run .pytest_cache

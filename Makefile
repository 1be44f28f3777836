# The two commands: `make run` starts a working cluster, `make test` runs the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

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

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/transfer.py

clean:
	rm -rf $(VENV) .dfs-run .pytest_cache

# `make demo` and `make test` work on a fresh machine with only python3: they build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev,sweep,tracking,export,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mura.train experiment=demo

# Two worker processes, one thread each (tests/conftest.py); the slowest tests are listed at the end, so what the
# suite costs stays in sight (CI prints it too).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=15

lint: $(STAMP)
	$(BIN)/ruff check mura tests notebooks

bench: $(STAMP)
	$(BIN)/python -m mura.bench

# The user manual (mkdocs.yml, docs/) into site/; --strict: a broken link, a missing page or snippet fails.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) outputs/* multirun data/synthetic

# `make demo` and `make test` work on a fresh machine with only python3: they build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev,sweep,tracking,export]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m mura.train experiment=demo

# Two worker processes, one thread each (tests/conftest.py): the suite in about 3 minutes on 2 cores.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check mura tests notebooks

bench: $(STAMP)
	$(BIN)/python -m mura.bench

clean:
	rm -rf $(VENV) outputs/* multirun data/synthetic

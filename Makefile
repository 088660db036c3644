# The two commands of the README's Quick start (demo, test); both set up everything they need
# first. Also: lint (ruff), types (mypy), unit (the tests that need neither the testbed nor
# PostgreSQL), wheel (CI's wheel job), clean.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint types unit wheel clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

demo: setup
	$(VENV)/bin/danescan demo

lint: setup
	$(VENV)/bin/ruff check scanner analysis testbed tests bench migrations
	$(VENV)/bin/lint-imports

types: setup
	$(VENV)/bin/mypy

test: lint types
	$(VENV)/bin/pytest -q

unit: setup
	$(VENV)/bin/pytest -q -m "not testbed and not postgres"

wheel: setup
	.ci/wheel-check

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# Two commands: `make run` and `make test`. Both set up .venv and the system
# packages they need (bubblewrap; PostgreSQL and Redis for the tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench sysdeps services venv clean

$(STAMP): pyproject.toml
	@deployment/bin/ensure-python $(PY)
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip >/dev/null
	@$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

sysdeps:
	@deployment/bin/ensure-system

services:
	@deployment/bin/ensure-services

run: venv sysdeps
	@$(BIN)/stockade migrate
	@$(BIN)/stockade demo
	@$(BIN)/stockade serve

test: venv sysdeps services
	@deployment/bin/ensure-browser
	@deployment/bin/run-tests $(BIN)/python

lint: venv
	@$(BIN)/ruff check app supervisor sandbox tests bench

bench: venv sysdeps services
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .stockade

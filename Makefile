# Two commands: `make run` and `make test`. Both set up .venv and the system
# packages they need (bubblewrap; PostgreSQL and Redis for the tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-compat lint bench sysdeps services venv clean

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

# The whole suite again on the newest Python >= 3.12 this machine has (its own venv), if it has one.
test-compat:
	@py=$$(deployment/bin/newest-python); \
	if [ -z "$$py" ]; then echo "test-compat: no Python >= 3.12 here; skipped (the suite ran on $$($(PY) -V 2>&1))"; exit 0; fi; \
	echo "test-compat: the suite on $$($$py -V 2>&1) ($$py)"; \
	$(MAKE) --no-print-directory test PY=$$py VENV=.venv-compat

lint: venv
	@$(BIN)/ruff check app supervisor sandbox tests bench

bench: venv sysdeps services
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) .venv-compat .stockade

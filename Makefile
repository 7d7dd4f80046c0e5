# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export NUMBA_CACHE_DIR := $(CURDIR)/.numba_cache

.PHONY: run test bench validate clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# `attobus run` exits 1 when a channel misses its scenario's bar; make reports
# that exit code without treating the set-up as broken.
run: $(STAMP)
	-$(BIN)/attobus run

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/attobus bench

validate: $(STAMP)
	$(BIN)/attobus validate

clean:
	rm -rf $(VENV) .numba_cache .hypothesis .pytest_cache build dist *.egg-info

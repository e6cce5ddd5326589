# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.toml
STAMP := $(VENV)/.installed

.PHONY: run test backtest train lint typecheck clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# constraints.txt pins torch to the local CPU wheel before anything can ask for a newer one.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/paperbot -c $(CONFIG) db upgrade
	$(BIN)/paperbot -c $(CONFIG) run

backtest: $(STAMP)
	$(BIN)/paperbot -c $(CONFIG) db upgrade
	$(BIN)/paperbot -c $(CONFIG) backtest

train: $(STAMP)
	$(BIN)/paperbot -c $(CONFIG) train

test: $(STAMP)
	$(BIN)/ruff check bot tests migrations bench
	$(BIN)/mypy
	$(BIN)/pytest -q

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache

# hashatlas: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test unit lint bench down status clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Stack (Kafka + Redis) + compactor + worker + API + a simulated feed, until Ctrl-C.
demo: install
	$(BIN)/hashatlas demo

# Every test, integration tests included, against a real Kafka and Redis of their own (free ports,
# a temporary folder): a running demo or stack is left alone.
test: install
	$(BIN)/hashatlas stack install --prometheus --browser
	$(BIN)/ruff check streams api tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

unit: install
	$(BIN)/pytest -q tests/unit

lint: install
	$(BIN)/ruff check streams api tests bench
	$(BIN)/mypy

bench: install
	$(BIN)/hashatlas stack up
	$(BIN)/python -m bench.run_all

down:
	$(BIN)/hashatlas stack down

status:
	$(BIN)/hashatlas stack status

clean: down
	rm -rf .stack

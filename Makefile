# Painpath: `make run` and `make test` each do all set-up on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium

.PHONY: install run test test-faults test-unit bench lint contract lock stack-up stack-down clean

install: $(STAMP)

# The dashboard's tests drive Debian's Chromium (Playwright's own browser download cannot work here).
$(CHROMIUM):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --requirement requirements.lock
	$(BIN)/pip install --quiet --no-deps --editable .
	touch $@

## The local stack (Tansu broker + embedded PostgreSQL), topics, schema, the gateway, two
## classifier workers and the coordinator; a simulated feed replayed; running until Ctrl-C.
run: install
	$(BIN)/painpath run --classifiers 2

## The whole suite: unit tests, then integration tests against a real broker and database.
test: install $(CHROMIUM)
	$(BIN)/painpath contract export --check
	$(BIN)/pytest -m "not faults"

## Fault injection: classifier workers killed, paused, added and removed; poison input;
## PostgreSQL stopped; the coordinator killed. Figures in test-artifacts/fault-report.json.
test-faults: install
	$(BIN)/pytest tests/faults -m faults

## Throughput, latency and memory in one run (bench/README.md); e.g. make bench BENCH_ARGS="--events 200000"
bench: install
	$(BIN)/python -m bench.run $(BENCH_ARGS)

test-unit: install
	$(BIN)/pytest tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Regenerate the JSON Schemas and the AsyncAPI document from the models.
contract: install
	$(BIN)/painpath contract export

## Re-pin dependencies after editing pyproject.toml.
lock: install
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

stack-up: install
	$(BIN)/painpath stack up

stack-down: install
	$(BIN)/painpath stack down

clean:
	-$(BIN)/painpath stack down
	rm -rf $(VENV) .painpath .pytest_cache

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 2

.PHONY: install install-dev run serve test lint bench bench-policy clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements.txt requirements-dev.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

## make run: set up everything on the embedded default and serve on http://127.0.0.1:8000
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_catalog
	$(BIN)/python manage.py bootstrap_demo
	rm -rf var/prometheus
	$(BIN)/uvicorn gateway_project.asgi:application --host $(HOST) --port $(PORT) --workers $(WORKERS)

## make test: the whole test suite (SQLite; PostgreSQL + Redis when DATABASE_URL / REDIS_URL are set)
test: install-dev
	$(BIN)/pytest

lint: install-dev
	$(BIN)/ruff check .

# Benchmarks run as production does: PostgreSQL + Redis (defaults: the local services).
BENCH_ENV := DATABASE_URL=$${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/gateway_bench} \
	REDIS_URL=$${REDIS_URL:-redis://127.0.0.1:6379/2}

bench-db: install-dev
	@psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='gateway_bench'" | grep -q 1 \
		|| psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE gateway_bench" >/dev/null
	$(BENCH_ENV) $(BIN)/python manage.py migrate --noinput -v0
	$(BENCH_ENV) $(BIN)/python manage.py seed_catalog -v0

## make bench: gateway overhead, throughput and 1000 in-flight streams against a fake OpenAI upstream
bench: bench-db
	$(BENCH_ENV) $(BIN)/python manage.py bench_gateway

## make bench-policy: policy evaluation + admission + settlement, p50/p99 in microseconds
bench-policy: bench-db
	$(BENCH_ENV) LOG_LEVEL=WARNING $(BIN)/python manage.py bench_policy

clean:
	rm -rf $(VENV) var

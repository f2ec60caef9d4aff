PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 2

.PHONY: install install-dev run serve test lint bench-policy clean

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

bench-policy: install-dev
	$(BIN)/python manage.py bench_policy

clean:
	rm -rf $(VENV) var

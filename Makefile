# Tidebase for Django. `make run` serves everything; `make test` runs the whole suite.
# With DATABASE_URL unset both use an embedded Postgres (pgserver) under .tidebase/.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 7373
WEB_WORKERS ?= 2
WEB_THREADS ?= 16
export PORT

.PHONY: help venv run migrate test test-fast lint typecheck bench stop clean sdk-sync sdk-check

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	touch $@

venv: $(VENV)/.installed ## Create the virtualenv and install pinned dependencies

migrate: venv ## Apply database migrations
	$(PY) manage.py migrate --noinput --skip-checks

run: venv migrate ## Serve API, dashboard, webhook worker and beat on $PORT (default 7373); restarts any that dies
	@exec $(PY) manage.py tidebase_run --port $(PORT) --workers $(WEB_WORKERS) --threads $(WEB_THREADS)

test: venv ## Run the whole test suite (unit, API, concurrency probes, interop with the official client)
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: venv ## The suite without the slow probes, the official-client interop and the browser tests
	$(PY) -m pytest -m "not slow and not interop" --ignore=tests/browser $(PYTEST_ARGS)

lint: venv sdk-check ## ruff check + format check, and the generated sync SDK is not stale
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

sdk-sync: venv ## Regenerate the sync SDK (tidebase/_client.py, _context.py) from its async source
	$(PY) scripts/unasync.py

sdk-check: venv ## Fail when the generated sync SDK differs from what scripts/unasync.py makes
	$(PY) scripts/unasync.py --check

typecheck: venv ## mypy (strict) with django-stubs
	DATABASE_URL=$${DATABASE_URL:-postgres://unused@127.0.0.1/unused} $(VENV)/bin/mypy config tidebase_core dashboard webhooks retention tidebase

bench: venv ## Benchmark the hot paths; prints JSON. BENCH_COMPARE_URL=<url>: route table side by side with that server
	@$(PY) scripts/bench.py $(if $(BENCH_COMPARE_URL),--compare-url '$(BENCH_COMPARE_URL)')

stop: ## Stop the embedded Postgres started by run/test
	-$(PY) -c "from config.embedded import stop; stop()"

clean: stop ## Remove the virtualenv and local data
	rm -rf $(VENV) .tidebase var

# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench venv clean

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

venv: $(STAMP)

# The demo: SQLite under var/, demo data, mail captured into var/mail/, a sender loop, the site on :8000.
run: $(STAMP)
	DEBUG=true $(PY) manage.py migrate --noinput
	DEBUG=true $(PY) manage.py dbmail_demo
	DEBUG=true ./scripts/run-demo

# The whole suite, against PostgreSQL (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/mailsite).
test: $(STAMP)
	$(PY) -m pytest

# ruff, configured in pyproject.toml: the whole tree linted and formatted.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# BENCH_ARGS=--memory measures memory instead (bench/README.md).
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache

# The two commands a new user needs: `make demo` and `make test` (only Python 3.10+ required).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 5000

.PHONY: test stress demo bench lint clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	touch $@

## test: create the venv if missing, install with the test extra, run every test
test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_ARGS)

## stress: the randomised kill test for many rounds (PROCMAN_STRESS_ROUNDS, default 200) per database
stress: $(VENV)/.installed
	PROCMAN_STRESS_ROUNDS=$${PROCMAN_STRESS_ROUNDS:-200} $(PY) -m pytest tests/reliability/test_reliability_kill.py -q $(PYTEST_ARGS)

## demo: serve the example evaluation service on http://127.0.0.1:$(PORT) (gunicorn, 2 workers)
demo: $(VENV)/.installed
	$(PY) -m flask --app example_app init-db
	@if $(PY) -c "import gunicorn" 2>/dev/null; then \
		$(VENV)/bin/gunicorn -c example_app/gunicorn_conf.py --bind 127.0.0.1:$(PORT) 'example_app:create_app()'; \
	else \
		$(PY) -m flask --app example_app run --port $(PORT); \
	fi

## bench: benchmarks against raw subprocess and the naive design (writes bench/results/latest.md)
bench: $(VENV)/.installed
	$(PY) bench/run.py $(BENCH_ARGS)

## lint: type-check and lint
lint: $(VENV)/.installed
	$(PY) -m mypy
	$(PY) -m ruff check flask_procman tests example_app bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache tests/artifacts

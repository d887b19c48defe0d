# The two commands a new user needs: `make demo` and `make test` (only Python 3.10+ required).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 5000

.PHONY: test stress demo bench lint dist clean

# Editable, so the suite and its subprocesses (flask --app, gunicorn, run from the checkout) all
# see the same code; the package as users get it (wheel + sdist, fresh venv) is proven by
# tests/test_packaging.py inside `make test`.
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
# The port is checked first (before installing anything): a busy one ends here with what to do,
# not in gunicorn's bind retries.
demo:
	@$(PYTHON) example_app/check_port.py $(PORT)
	@$(MAKE) --no-print-directory $(VENV)/.example-installed
	$(PY) -m flask --app example_app init-db
	@if $(PY) -c "import gunicorn" 2>/dev/null; then \
		$(VENV)/bin/gunicorn -c example_app/gunicorn_conf.py --bind 127.0.0.1:$(PORT) 'example_app:create_app()'; \
	else \
		$(PY) -m flask --app example_app run --port $(PORT); \
	fi

$(VENV)/.example-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[example]'
	touch $@

## bench: benchmarks against raw subprocess and the naive design (writes bench/results/latest.md)
bench: $(VENV)/.installed
	$(PY) bench/run.py $(BENCH_ARGS)

## lint: type-check and lint
lint: $(VENV)/.installed
	$(PY) -m mypy
	$(PY) -m ruff check flask_procman tests example_app bench

## dist: build the sdist and the wheel into dist/ and check them with twine
dist: $(VENV)/.installed
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(PY) -m twine check --strict dist/*

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache tests/artifacts

# The two commands of the README's quickstart: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The Workers' test dependencies (miniflare, which carries workerd); npm ci replaces node_modules, stamp included.
NPM_STAMP := infra/worker/node_modules/.installed

.PHONY: setup test lint typecheck pytest demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NPM_STAMP): infra/worker/package-lock.json
	npm ci --prefix infra/worker --no-audit --no-fund --loglevel=error >/dev/null
	touch $(NPM_STAMP)

setup: $(STAMP) $(NPM_STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/actionlint -no-color $(wildcard .github/workflows/*.yml .github/workflows/*.yaml)

typecheck: $(STAMP)
	$(PY) -m mypy --strict runtime/dualcache infra

pytest: $(STAMP) $(NPM_STAMP)
	$(PY) -m pytest

test: lint typecheck pytest

demo: $(STAMP)
	$(VENV)/bin/dualcache demo

clean:
	rm -rf $(VENV) infra/worker/node_modules .dualcache .pytest_cache .mypy_cache .ruff_cache

# The README's commands: `make demo` (the demo extra only) and `make test` (the dev extra, then every check).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# pip prints each package it collects, with a progress bar for downloads, so a first install is never silent.
PIP_INSTALL := $(PY) -m pip install --progress-bar on --disable-pip-version-check
# One stamp per extra installed (editable) into .venv. The dev extra includes the demo extra, so installing dev
# also stamps demo; `make demo` then `make test` adds what dev has on top of demo to the same venv.
DEMO_STAMP := $(VENV)/.installed-demo
DEV_STAMP := $(VENV)/.installed-dev
# The Workers' test dependencies (miniflare, which carries workerd); npm ci replaces node_modules, stamp included.
NPM_STAMP := infra/worker/node_modules/.installed

.PHONY: setup test lint typecheck pytest wheel-check demo clean

$(PY):
	@echo "==> creating the virtualenv $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)

# Package counts: measured in a fresh venv with Python 3.11 (pip list, pip itself excluded).
$(DEMO_STAMP): pyproject.toml | $(PY)
	@echo "==> installing dualcache with the demo extra (emulator, PDF, offline plan: about 40 packages, 180 MB)"
	$(PIP_INSTALL) -e '.[demo]'
	touch $(DEMO_STAMP)

$(DEV_STAMP): pyproject.toml | $(PY)
	@echo "==> installing dualcache with the dev extra (the demo's plus test, lint and type tools: about 70 packages, 480 MB in all)"
	$(PIP_INSTALL) -e '.[dev]'
	touch $(DEV_STAMP) $(DEMO_STAMP)

$(NPM_STAMP): infra/worker/package-lock.json
	@echo "==> installing the Workers runtime for the tests (npm ci: miniflare, workerd)"
	npm ci --prefix infra/worker --no-audit --no-fund --loglevel=error >/dev/null
	touch $(NPM_STAMP)

setup: $(DEV_STAMP) $(NPM_STAMP)

lint: $(DEV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/actionlint -no-color $(wildcard .github/workflows/*.yml .github/workflows/*.yaml)

typecheck: $(DEV_STAMP)
	$(PY) -m mypy --strict runtime/dualcache infra

# One worker per core (pytest-xdist): on a 2-core machine the suite took 379 s in one process, 182 s in two.
pytest: $(DEV_STAMP) $(NPM_STAMP)
	$(PY) -m pytest -n auto

# Builds the wheel, installs it with the local extra into a fresh venv and uses it from outside the repo.
wheel-check: | $(PY)
	scripts/wheel-check.sh $(PY)

test: lint typecheck pytest wheel-check

demo: $(DEMO_STAMP)
	@echo "==> running the offline demo (about 10 s a simulated day)"
	$(VENV)/bin/dualcache demo

clean:
	rm -rf $(VENV) infra/worker/node_modules .dualcache .pytest_cache .mypy_cache .ruff_cache

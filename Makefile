# embperf: `make run` sets everything up and serves the portal; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PORT ?= 8000
HOST ?= 127.0.0.1
export PORT HOST

.PHONY: run test bench lint venv test-deps assets setup clean-var check-deploy

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	touch $@

$(VENV)/.installed-test: requirements-test.txt requirements.txt $(VENV)/.installed
	$(PIP) install -q -r requirements-test.txt
	touch $@

venv: $(VENV)/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

assets: node_modules/.installed

# Migrations, first account and demo data; each step does nothing when already done.
setup: venv assets
	$(PY) manage.py migrate --noinput -v0
	$(PY) manage.py embperf_bootstrap

# gunicorn (static files hashed and compressed by collectstatic, served by whitenoise), Celery worker
# and simulator together; Ctrl-C stops all three. HOST=0.0.0.0 to listen beyond this machine.
run: setup
	$(PY) manage.py collectstatic --noinput -v0
	@echo "embperf: open http://$(HOST):$(PORT)/ (sign in as admin; PORT=... make run to change the port)"
	$(VENV)/bin/honcho start -f Procfile

# Browser tests drive Debian's chromium; install it where it is missing (needs root, as on CI).
/usr/bin/chromium:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null

test-deps: $(VENV)/.installed-test assets /usr/bin/chromium

test: test-deps
	$(VENV)/bin/ruff check .
	$(MAKE) --no-print-directory check-deploy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

# Django's deployment checks with the production environment of docs/production.env: no warning allowed.
check-deploy: venv
	set -a && . docs/production.env && set +a && \
	SECRET_KEY="$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))')" \
	EMBPERF_VAR_DIR="$$(mktemp -d)" $(PY) manage.py check --deploy --fail-level WARNING

bench: test-deps
	$(PY) scripts/bench.py

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

clean-var:
	rm -rf var/

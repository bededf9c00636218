# ossai: two commands on a fresh machine.
#   make run    create .venv, install everything, start ossai serve on the bundled ossai-demo model
#   make test   install what the tests need and run them (lint included)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check

.PHONY: run test install install-test lint clean web

# torch first and pinned: the CPU wheel. Every later install sees torch satisfied and never pulls a CUDA build.
$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	@touch $@

# bubblewrap sandboxes the python tool; Debian's package, installed when missing (root, or via sudo).
$(VENV)/.system: | $(VENV)/.torch
	@command -v bwrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq bubblewrap; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq bubblewrap; fi; } \
	  || echo "warning: bubblewrap not installed: the python tool will refuse to run (see README)" >&2
	@touch $@

# The web client's browser dependencies (marked, DOMPurify, highlight.js, KaTeX): the npm registry's
# packages pinned by package-lock.json, copied into ossai/web/vendor/ (not committed).
ossai/web/vendor/.built: package.json package-lock.json scripts/build-web.mjs
	@command -v npm >/dev/null || { echo "error: npm not found: install Node.js and npm" \
	  "(Debian: apt-get install nodejs npm) to build the web client" >&2; exit 1; }
	npm ci --no-audit --no-fund
	node scripts/build-web.mjs

web: ossai/web/vendor/.built

$(VENV)/.installed: $(VENV)/.torch $(VENV)/.system pyproject.toml ossai/kernels/cpu/mxfp4.cpp | ossai/web/vendor/.built
	$(PIP) install -e .
	$(PY) -c "from ossai.kernels import cpu; cpu.load(required=True)"  # compile the CPU kernels now
	@touch $@

# chromium runs the browser tests (tests/web: Playwright drives Debian's build; nothing is downloaded at run
# time); installed when missing (root, or via sudo), for `make test` only.
$(VENV)/.system-test: | $(VENV)/.torch
	@[ -x /usr/bin/chromium ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; fi; } \
	  || echo "warning: chromium not installed: the browser tests (tests/web) cannot run" >&2
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed $(VENV)/.system-test pyproject.toml
	$(PIP) install -e '.[test]'
	@touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: $(VENV)/.installed
	@echo "ossai: serving the model store on http://127.0.0.1:8000; with an empty store that is ossai-demo,"
	@echo "       a tiny model for trying ossai (ossai pull gpt-oss:20b for real use)"
	$(VENV)/bin/ossai serve --port 8000

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(VENV)/.installed-test
	$(VENV)/bin/ruff check .
	@$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests: the set-up is broken" >&2; fi; \
	exit $$rc

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build *.egg-info node_modules ossai/web/vendor

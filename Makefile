# Two commands for a new user: `make run` and `make test`. Everything else is set up on demand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: run deploy demo test test-fast system-packages bench docs readme-sample soak lint lock clean

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; v = sys.version_info; sys.exit(0 if (3, 11) <= v[:2] < (3, 14) else "inventory-sync needs Python 3.11, 3.12 or 3.13; found %d.%d" % v[:2])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@printf '#!/bin/sh\n# dev tooling from this checkout (not in the wheel)\nPYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" exec "$(CURDIR)/$(BIN)/python" -m devstack "$$@"\n' > $(BIN)/inventory-sync-dev
	@chmod +x $(BIN)/inventory-sync-dev
	@touch $@

## run: Prefect server and UI on 127.0.0.1:4200 (PORT=... to move it), the sandbox API, the
##      deployments, a worker and one sync right away; Ctrl-C stops everything
run: $(STAMP)
	$(BIN)/inventory-sync-dev local-stack --port $(or $(PORT),4200)

## deploy: set up the Prefect server at $$PREFECT_API_URL: work pool, deployments, automations
##         (CONFIG=/etc/inventory-sync/sync.toml, NOTIFY=<notification block>, TIMEZONE=Europe/Amsterdam)
deploy: $(STAMP)
	$(BIN)/inventory-sync deploy $(if $(CONFIG),--config "$(CONFIG)") \
	  $(if $(NOTIFY),--notify "$(NOTIFY)") $(if $(TIMEZONE),--timezone "$(TIMEZONE)")

## demo: one sync of the demo feeds against the local sandbox API, then print the summary
demo: $(STAMP)
	$(BIN)/inventory-sync-dev demo

## test: the whole suite (real HTTP on loopback, real Prefect, real GX); first the system packages
test: system-packages $(STAMP)
	$(BIN)/python -m pytest -n 3 --dist loadfile --durations=15

## system-packages: as root, install what the suite needs (PostgreSQL, Chromium); else say how
system-packages:
	@bash devstack/system_packages.sh

## test-fast: the logic tests only (no Prefect server, PostgreSQL or browser), in under 30 s
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "fast and not server and not slow" -q -p no:xdist --ignore=tests/e2e

## bench: the five benchmarks at full size (a 1M-product catalog), rewriting docs/benchmarks.md
bench: $(STAMP)
	$(BIN)/python -m benchmarks.runner --command "make bench"

## docs: rewrite docs/configuration.md from the configuration's pydantic models
docs: $(STAMP)
	$(BIN)/python -m devstack.config_docs

## readme-sample: rewrite README.md's sample run from a real `make demo` (a test checks it)
readme-sample: $(STAMP)
	$(BIN)/python -m devstack.readme_sample

## soak: hundreds of 15-minute cycles against a real Prefect server, retention shortened to
##       90 s, stopping at 9 min; writes its section of docs/benchmarks.md (docs/operations.md)
soak: $(STAMP)
	$(BIN)/python -m benchmarks.soak --command "make soak"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

## lock: re-resolve requirements.lock after changing pyproject.toml (needs the network)
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet uv && $(BIN)/uv pip compile pyproject.toml --extra dev \
	  --extra bench --universal --python-version 3.11 --generate-hashes -o requirements.lock

clean:
	rm -rf $(VENV) .prefect demo/feeds demo/catalog.json demo/reports

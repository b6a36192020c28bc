# Everything a fresh machine needs: `make test` and `make demo` create the venv and install first.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.14.1 + torchvision 0.29.1 is the pair that installs from this workplace's disk cache.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)

.PHONY: install test lint demo clean browser-deps

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools<81" wheel
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	@touch $@

install: $(STAMP)

# Debian's Chromium for the real-browser UI test (needs root; skipped when already present).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium missing and not root: install Debian's chromium package" >&2; exit 1; fi; }

lint: install
	$(BIN)/ruff check embedsvc indexer webui tests bench

test: install browser-deps
	$(BIN)/ruff check embedsvc indexer webui tests bench
	$(BIN)/python -m pytest -q --durations=15

# Other ports: make demo DEMO_ARGS="--api-port 8010 --ui-port 8511" (or EMBEDSVC_DEMO_API_PORT / _UI_PORT).
DEMO_ARGS ?=
demo: install
	$(BIN)/python -m embedsvc.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) data build *.egg-info

# memslotd — the two commands a new user needs: `make run` and `make test`.
# Both bootstrap the virtualenv, the dependencies and the cffi build on a fresh machine.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
NATIVE := service/memslotd/_native.abi3.so

.PHONY: run test install browser openapi openapi-check bench clean

$(STAMP): pyproject.toml setup.py native/build_shim.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

# The shim is rebuilt whenever its C or header changes.
$(NATIVE): native/memslotd_shim.c native/memslotd_shim.h | $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

install: $(STAMP) $(NATIVE)

run: install  ## run the daemon with embedded defaults (socket: /run/memslotd/memslotd.sock as root)
	$(VENV)/bin/memslotd $(ARGS)

test: install browser  ## the whole suite against the real /dev/kvm, plus the OpenAPI drift check
	$(PY) -m pytest $(PYTEST_ARGS)

# The dashboard test drives Debian's Chromium with Playwright (no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium could not be installed: the dashboard test will be skipped"

openapi: install  ## regenerate openapi.yaml and asyncapi.yaml from the app
	$(PY) scripts/openapi.py

openapi-check: install  ## fail when openapi.yaml or asyncapi.yaml differs from the app
	$(PY) scripts/openapi.py --check

bench: install  ## benchmarks (not part of `make test`)
	$(PY) -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) build service/*.egg-info service/memslotd/_native*.so .pytest_cache

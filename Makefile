# memslotd — the two commands a new user needs: `make run` and `make test`.
# Both bootstrap the virtualenv, the dependencies and the cffi build on a fresh machine.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
NATIVE := service/memslotd/_native.abi3.so
# uv installs in seconds what pip needs half a minute for (index parsing, bytecode compilation);
# one on the PATH is used (or a venv's own from before 0.2), otherwise the host's pip puts it in
# $(VENV)/uv (--target: one pip process; `--python $(PY)` started pip a second time in the venv).
UV     ?= $(firstword $(shell command -v uv 2>/dev/null) $(wildcard $(VENV)/bin/uv) $(VENV)/uv/bin/uv)
INSTALL = $(UV) pip install --quiet --python $(PY)

.PHONY: run test install install-test browser openapi openapi-check bench soak clean lab lab-test

# Runtime dependencies only (what `make run` needs). The build tools go into the venv first,
# so the package is built once, without an isolated build environment.
$(STAMP): pyproject.toml setup.py native/build_shim.py
	@test -x $(PY) || $(PYTHON) -m venv --without-pip $(VENV)
	@test -x $(UV) || $(PYTHON) -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
	  --target $(VENV)/uv uv
	$(INSTALL) 'setuptools>=77' wheel 'cffi>=1.17'
	$(INSTALL) --no-build-isolation -e .
	@touch $@

# `make test` adds the test extras (pytest, hypothesis, schemathesis, mypy, playwright, ...).
$(TEST_STAMP): $(STAMP)
	$(INSTALL) --no-build-isolation -e '.[test]'
	@touch $@

# The shim is rebuilt whenever its C or header changes.
$(NATIVE): native/memslotd_shim.c native/memslotd_shim.h | $(STAMP)
	$(INSTALL) --no-deps --no-build-isolation --reinstall-package memslotd -e .
	@touch $@

install: $(STAMP) $(NATIVE)

install-test: install $(TEST_STAMP)

run: install  ## run the daemon with embedded defaults (socket: /run/memslotd/memslotd.sock as root)
	$(VENV)/bin/memslotd $(ARGS)

test: install-test browser  ## the whole suite against the real /dev/kvm, plus the OpenAPI drift check
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

# The KVM lab (lab/): a kernel with memory attributes under QEMU TCG, the host's root inside.
# `make lab` installs QEMU and the build deps (Debian), builds or reuses the cached lab kernel.
lab:  ## the lab kernel (cached by source version + fragment hash) and QEMU
	@kernel=$$(lab/build-kernel.sh) && echo "lab kernel: $$kernel"

# `make lab-test`: the lab suite (`pytest -m lab`) inside the lab; ALL=1: the whole suite, 8 GiB,
# about 90 min under TCG. The dashboard test (tests/ui) stays on the host: it proves what a
# browser draws from the API, which no kernel feature changes, and Chromium under TCG is minutes
# per page.
LAB_MEM     ?= $(if $(ALL),8G,4G)
LAB_TIMEOUT ?= $(if $(ALL),9000,1800)
LAB_PYTEST  := $(if $(ALL),--ignore=tests/ui,-m lab)
lab-test: install-test  ## the lab suite inside the lab (ALL=1: the whole suite there; lab/run makes the lab first)
	lab/run --mem $(LAB_MEM) --timeout $(LAB_TIMEOUT) -- $(PY) -m pytest $(LAB_PYTEST) $(PYTEST_ARGS)

soak: install  ## N clients churn one daemon, then reconcile (not part of `make test`; ARGS="--clients 16 --seconds 60")
	$(PY) scripts/soak.py $(ARGS)

clean:
	rm -rf $(VENV) build service/*.egg-info service/memslotd/_native*.so .pytest_cache

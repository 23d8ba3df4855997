# rapidfire_core developer tasks. Quick start: `make demo`, `make test`.
#
#   make install   venv in $(VENV), torch ($(TORCH_SPEC)) first, then `pip install -e ".[test]"`
#   make demo      the offline demo job (`rapidfire demo`)
#   make test      the default test suite (benchmarks deselected)
#   make system-deps  Debian packages the tests need: chromium (the dashboard's browser test)
#   make bench     pytest-benchmark suites in benchmarks/
#   make lint      ruff check + ruff format --check;  make format  fixes what it can
#   make wheel     dist/rapidfire_core-<version>+<variant>-cp3X-cp3X-manylinux_2_28_x86_64.whl (plus any older
#                  tag auditwheel finds, e.g. manylinux_2_26), offline,
#                  checked by auditwheel (RAPIDFIRE_CUDA=0 for the cpu variant; docs/install.md)
#   make clean     build outputs;  make distclean  also the venv
#
# GPU users: make install TORCH_SPEC=torch==2.13.0 TORCH_INDEX=https://download.pytorch.org/whl/cu130

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
# Installed before anything else: left to the resolver, pip picks a multi-GB CUDA torch.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PIP_FLAGS ?=
PYTEST_ARGS ?=

PY := $(VENV)/bin/python
PIP := $(PY) -m pip
RUN_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# DEPS_STAMP: dependencies installed for this pyproject.toml/setup.py.
# STAMP: the editable install (and rapidfire_core/_C*.so) matches csrc/ and python/ too.
DEPS_STAMP := $(VENV)/.rapidfire-deps.stamp
STAMP := $(VENV)/.rapidfire-install.stamp
NATIVE_SRCS := CMakeLists.txt $(shell find csrc python -type f \
	\( -name '*.h' -o -name '*.def' -o -name '*.cuh' -o -name '*.cpp' -o -name '*.cu' \) 2>/dev/null)
# The oldest glibc our wheels support: RHEL 8 / AlmaLinux 8 / Ubuntu 20.04 (2.31) and newer.
WHEEL_PLAT ?= manylinux_2_28_x86_64
LINT_PATHS := $(wildcard rapidfire_core tests benchmarks setup.py)

.PHONY: venv install demo test system-deps bench lint format wheel clean distclean

venv: $(PY)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) --upgrade pip

# A changed pyproject.toml/setup.py reinstalls everything; a changed C++ source only
# rebuilds the module, incrementally, with the build tools already in the venv.
$(STAMP): $(PY) pyproject.toml setup.py $(NATIVE_SRCS)
	@set -e; \
	if [ ! -f $(DEPS_STAMP) ] || [ pyproject.toml -nt $(DEPS_STAMP) ] || [ setup.py -nt $(DEPS_STAMP) ]; then \
		echo "+ pip install $(TORCH_SPEC), then -e .[test]"; \
		$(PIP) install $(PIP_FLAGS) "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)); \
		$(PIP) install $(PIP_FLAGS) -e ".[test]"; \
		touch $(DEPS_STAMP); \
	else \
		echo "+ rebuild rapidfire_core._C"; \
		$(PIP) install $(PIP_FLAGS) --no-deps --no-build-isolation -e .; \
	fi
	touch $@

install: $(STAMP)

demo: install
	$(RUN_ENV) $(VENV)/bin/rapidfire demo

test: install
	$(RUN_ENV) $(PY) -m pytest -q $(PYTEST_ARGS)

# tests/dashboard/test_browser.py drives Debian's chromium (Playwright's own browser download
# is not reachable from CI). Installed only when missing; needs root or sudo.
system-deps:
	@if [ -x /usr/bin/chromium ]; then \
		echo "system-deps: /usr/bin/chromium is installed"; \
	else \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y chromium; \
	fi

# Exit 5 is pytest's "no tests collected": not a failure while benchmarks/ fills up.
bench: install
	@if [ ! -d benchmarks ]; then echo "make bench: no benchmarks/ directory"; exit 0; fi; \
	rc=0; $(RUN_ENV) $(PY) -m pytest -m bench benchmarks --benchmark-only $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make bench: no benchmarks collected"; exit 0; fi; exit $$rc

lint: install
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format: install
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

# Built with the venv's build tools (offline, no isolation) in a throwaway CMake tree, then
# `auditwheel repair`: it refuses a module that needs a newer glibc/libstdc++ than $(WHEEL_PLAT) or a
# library outside the manylinux set. A CI with containers builds the same with cibuildwheel
# (pyproject.toml [tool.cibuildwheel]) for CPython 3.10-3.13.
wheel: install
	@set -e; raw=$$(mktemp -d); trap 'rm -rf "$$raw"' EXIT; \
	RAPIDFIRE_BUILD_DIR="$$raw/cmake" $(PIP) wheel $(PIP_FLAGS) . --no-deps --no-build-isolation -w "$$raw"; \
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) -m auditwheel repair --plat $(WHEEL_PLAT) -w dist "$$raw"/rapidfire_core-*.whl; \
	ls -l dist

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .benchmarks
	rm -f rapidfire_core/_C*.so $(STAMP)
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# rapidfire_core developer tasks. Quick start: `make demo`, `make test`.
#
#   make install   venv in $(VENV), torch ($(TORCH_SPEC)) first, then `pip install -e ".[test]"`
#   make demo      the offline demo job (`rapidfire demo`)
#   make test      the default test suite (benchmarks deselected)
#   make system-deps  Debian packages the tests need: chromium (the dashboard's browser test)
#   make bench     every pytest-benchmark suite in benchmarks/, the run saved as JSON in .benchmarks/
#   make bench-compare  the suites again against a saved run; fails on a regression beyond BENCH_NOISE
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

.PHONY: venv install demo test system-deps bench bench-compare lint format wheel clean distclean

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

# Benchmarks: each run is saved as pytest-benchmark JSON in $(BENCH_STORAGE)/<machine>/NNNN_*.json.
# bench-compare runs them again against BENCH_BASELINE (a saved run's number, e.g. 0003; empty:
# the latest saved run) and fails if a benchmark's minimum over its rounds is more than
# BENCH_NOISE slower than the baseline's: the minimum is the figure least moved by other load,
# and 20% is above the round-to-round spread of the engine suites on a quiet 2-core machine.
# RF_BENCH_ROUNDS=1 (environment) runs every suite with one round, e.g. to check they work;
# BENCH_PATHS=benchmarks/bench_fused.py runs one suite.
BENCH_PATHS ?= benchmarks
BENCH_STORAGE ?= .benchmarks
BENCH_NOISE ?= 20%
BENCH_BASELINE ?=
BENCH_PYTEST := $(RUN_ENV) $(PY) -m pytest -m bench $(BENCH_PATHS) --benchmark-only \
	--benchmark-storage=$(BENCH_STORAGE) --benchmark-group-by=group

bench: install
	$(BENCH_PYTEST) --benchmark-autosave $(PYTEST_ARGS)

bench-compare: install
	@ls $(BENCH_STORAGE)/*/*.json >/dev/null 2>&1 || { \
		echo "make bench-compare: no saved run in $(BENCH_STORAGE)/ to compare with; run make bench first"; exit 2; }
	$(BENCH_PYTEST) --benchmark-compare$(if $(BENCH_BASELINE),=$(BENCH_BASELINE)) \
		--benchmark-compare-fail=min:$(BENCH_NOISE) $(PYTEST_ARGS)

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

# Copyright (c) osfleet.hup contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# osfleet.hup: development, test and demo entry points. Run as root on Debian 12 (the lab needs
# loop devices and namespaces). Every target works from a fresh clone; `make deps` runs first where
# a target needs the venv or the Debian packages. Logs of each target go to build/logs/<target>.log.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

REPO := $(CURDIR)
VENV := $(REPO)/.venv
BUILD := $(REPO)/build
LOGS := $(BUILD)/logs
TOOLS := $(REPO)/tests/tools
LABCTL := $(REPO)/tests/lab/labctl

# The checkout, importable and installed as the collection osfleet.hup (same link as tests/unit/conftest.py).
COLLECTIONS := $(BUILD)/collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/osfleet/hup

export PATH := $(VENV)/bin:$(PATH)
# make test: a skipped test fails the run (tests/conftest.py); set 0 to allow skips locally
export OSFLEET_TESTS_STRICT ?= 1
RUN_WITH_COLLECTION := env ANSIBLE_COLLECTIONS_PATH=$(COLLECTIONS) PYTHONPATH=$(COLLECTIONS)

PYTEST_ARGS ?= -ra

# $(call pytest,<target name>,<test directory>)
# Runs pytest on the directory; a directory that holds no test file yet is reported and skipped.
define pytest
	@mkdir -p $(LOGS)
	@if [ -z "$$(find $(2) -name 'test_*.py' -print -quit 2>/dev/null)" ]; then \
		echo "$(1): no tests under $(2) yet: skipped" | tee $(LOGS)/$(1).log; \
	else \
		$(RUN_WITH_COLLECTION) $(VENV)/bin/python -m pytest $(PYTEST_ARGS) $(2) 2>&1 | tee $(LOGS)/$(1).log; \
	fi
endef

.PHONY: help deps units sanity lint lab-tests integration molecule test demo bench clean collection-link ee-context

help:
	@echo "make demo         bring up a small lab fleet, show it, take it down (installs what it needs)"
	@echo "make test         deps + units + sanity + lint + lab-tests + integration + molecule, with a summary"
	@echo "make deps         Debian packages (tests/lab/apt-packages.txt, tests/tools/apt-packages.txt) and .venv"
	@echo "make units        pytest tests/unit"
	@echo "make sanity       ansible-test sanity --local --python 3.13 on a snapshot in build/ansible_collections"
	@echo "make lint         ansible-lint, production profile, offline"
	@echo "make lab-tests    pytest tests/lab"
	@echo "make integration  pytest tests/integration"
	@echo "make molecule     molecule test --all (scenarios in extensions/molecule)"
	@echo "make bench        benchmarks, JSON on stdout and in build/bench/results.json (BENCH_ARGS=--quick: aim < 3 min)"
	@echo "make ee-context   execution environment build context in build/ee/context (ansible-builder create)"
	@echo "make clean        take down every lab prefix under build/lab, then remove build/"

deps:
	@$(TOOLS)/deps

collection-link:
	@mkdir -p $(dir $(COLLECTION_LINK))
	@[ -L $(COLLECTION_LINK) ] || ln -s $(REPO) $(COLLECTION_LINK)

# units and lab-tests run on two workers (xdist); their tests use tmp paths and lab prefixes of their own
UNIT_WORKERS ?= 2
units: PYTEST_ARGS += $(if $(filter-out 0,$(UNIT_WORKERS)),-n $(UNIT_WORKERS))
units: deps collection-link
	$(call pytest,units,tests/unit)

sanity: deps
	@mkdir -p $(LOGS)
	@$(TOOLS)/sanity 2>&1 | tee $(LOGS)/sanity.log

lint: deps collection-link
	@mkdir -p $(LOGS)
	@$(RUN_WITH_COLLECTION) ansible-lint --nocolor 2>&1 | tee $(LOGS)/lint.log

LAB_TEST_WORKERS ?= 2
lab-tests: PYTEST_ARGS += $(if $(filter-out 0,$(LAB_TEST_WORKERS)),-n $(LAB_TEST_WORKERS) --dist loadfile)
lab-tests: deps collection-link
	$(call pytest,lab-tests,tests/lab)

# The integration modules use labs of their own (one LAB_PREFIX each), so two run at once, a
# module per worker (a module's tests share its lab); INTEGRATION_WORKERS=0 runs them in one process.
INTEGRATION_WORKERS ?= 2
# --no-loadscope-reorder: xdist would otherwise hand out the modules by their number of tests, undoing the
# longest-first order of tests/integration/conftest.py (a 5-test module of 6 minutes started last, alone);
# --durations: the slowest tests in the log, to see where the time goes
integration: PYTEST_ARGS += $(if $(filter-out 0,$(INTEGRATION_WORKERS)),-n $(INTEGRATION_WORKERS) --dist loadfile --no-loadscope-reorder) --durations=25
integration: deps collection-link
	$(call pytest,integration,tests/integration)

molecule: deps collection-link
	@mkdir -p $(LOGS)
	@if [ -z "$$(find extensions/molecule -name molecule.yml -print -quit 2>/dev/null)" ]; then \
		echo "molecule: no scenario under extensions/molecule yet: skipped" | tee $(LOGS)/molecule.log; \
	else \
		$(RUN_WITH_COLLECTION) NO_COLOR=1 molecule test --all 2>&1 | tee $(LOGS)/molecule.log; \
	fi

test:
	@$(TOOLS)/test-all deps units sanity lint lab-tests integration molecule

# The OS version `make demo` rolls the lab fleet out to (osfleet.hup.rollout); empty: only bring it up.
DEMO_TARGET_VERSION ?= 2.113.0

demo: deps collection-link
	@mkdir -p $(LOGS)
	@DEMO_TARGET_VERSION=$(DEMO_TARGET_VERSION) $(RUN_WITH_COLLECTION) $(TOOLS)/demo 2>&1 | tee $(LOGS)/demo.log

# make bench BENCH_ARGS=--quick: one release pair, fleets of 1 and 2, 3 pairs per ratio; not part of make test (its pure part's
# unit tests are: tests/unit/test_bench_stats.py)
BENCH_ARGS ?=
bench: deps collection-link
	@mkdir -p $(LOGS)
	@$(RUN_WITH_COLLECTION) $(VENV)/bin/python $(TOOLS)/bench.py $(BENCH_ARGS) 2>$(LOGS)/bench.log | tee $(LOGS)/bench.json

ee-context: deps
	@mkdir -p $(LOGS)
	@$(TOOLS)/ee-context 2>&1 | tee $(LOGS)/ee-context.log

clean:
	@for state in $(BUILD)/lab/*/state.json; do \
		[ -e "$$state" ] || continue; \
		prefix=$$(basename "$$(dirname "$$state")"); \
		echo "clean: labctl down --prefix $$prefix"; \
		$(LABCTL) down --prefix "$$prefix"; \
	done
	rm -rf $(BUILD)

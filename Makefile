# The two commands a new user needs:
#   make up     install everything into .venv and start the local stack (`fogline up`)
#   make test   install everything into .venv, lint, and run the test suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,cloud,dev

.PHONY: install system-deps up test lint bench bench-cascade bench-chaos bench-tls bench-rollout bench-tracing protos

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	touch $@

up: install
	$(VENV)/bin/fogline up

# Debian's chromium, chromium-driver and prometheus, for the browser and Prometheus tests, when this machine
# can install them (root or passwordless sudo); otherwise one line each on which tests will be skipped. Never fails.
system-deps:
	-@bash tools/install_system_deps.sh

test: system-deps install lint
	$(PY) tools/gen_protos.py --check
	$(PY) -m pytest

# ruff, mypy on every package, and the import contracts in pyproject.toml (the layers of docs/architecture.md)
lint: install
	$(VENV)/bin/ruff check fogline edge_master device_node cloud_master tests bench tools
	$(VENV)/bin/mypy fogline edge_master device_node cloud_master
	$(VENV)/bin/lint-imports

bench: install
	$(PY) -m bench
	$(PY) -m bench.cascade
	$(PY) -m bench.chaos
	$(PY) -m bench.tls
	$(PY) -m bench.rollout
	$(PY) -m bench.tracing

bench-tracing: install
	$(PY) -m bench.tracing

bench-rollout: install
	$(PY) -m bench.rollout

bench-tls: install
	$(PY) -m bench.tls

bench-cascade: install
	$(PY) -m bench.cascade

bench-chaos: install
	$(PY) -m bench.chaos

protos: install
	$(PY) tools/gen_protos.py

# istio-canary-upgrade: `make demo` runs the upgrade on the local sandbox; `make test` runs
# every test (what CI runs). Both set up what they need from scratch.
SHELL := /bin/bash
.DEFAULT_GOAL := help
include mk/venv.mk
include mk/demo.mk

export PYTHONPATH := $(CURDIR)/include:$(CURDIR)
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__PLUGINS_FOLDER := $(CURDIR)/plugins
PYTEST := $(PY) -m pytest

.PHONY: help setup system-deps sandbox-build sandbox-up sandbox-down test unit integration lint

help:
	@echo "make demo   - set up, start the sandbox and run the upgrade DAG on it"
	@echo "make test   - set up and run lint, unit, integration and DAG tests (CI)"
	@echo "make unit   - unit tests only (no cluster)"

# Debian packages the sandbox needs: Prometheus and openssl (root, as on our machines).
system-deps:
	@command -v prometheus >/dev/null && command -v openssl >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends prometheus openssl >/dev/null; }

sandbox-build:
	sandbox/build.sh

setup: venv system-deps sandbox-build

sandbox-up: setup
	sandbox/sandbox up --seed

sandbox-down:
	sandbox/sandbox down

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

unit: venv system-deps
	$(PYTEST) tests/unit

# The integration and DAG tests start the sandbox once for the session (and stop it after,
# unless it was already running); the browser test starts its own sandbox and Airflow.
integration: setup
	$(PYTEST) tests/integration tests/dags

test: setup browser-deps lint
	$(PYTEST) tests

# Benchmarks print ratios against a baseline run in the same process. They use a sandbox of
# their own (other ports, BENCH_NAMESPACES extra namespaces) and stop it afterwards.
BENCH_NAMESPACES ?= 200
BENCH_ENV := SANDBOX_HOME=/tmp/istio-canary-bench SANDBOX_ETCD_PORT=42379 \
  SANDBOX_APISERVER_PORT=46443 SANDBOX_KWOK_PORT=50247 SANDBOX_KUBELET_PORT=50250 \
  SANDBOX_TRAFFIC_PORT=49464 \
  SANDBOX_PROMETHEUS_PORT=49090
.PHONY: bench
bench: setup
	$(BENCH_ENV) sandbox/sandbox up --seed --extra-namespaces $(BENCH_NAMESPACES) > /tmp/istio-canary-bench.env
	. /tmp/istio-canary-bench.env && $(PY) bench/snapshot_scale.py; rc=$$?; \
	  $(BENCH_ENV) sandbox/sandbox down --purge; exit $$rc

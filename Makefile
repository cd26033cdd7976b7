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

# Debian packages the sandbox needs (Prometheus and openssl) and the distributed stack's
# PostgreSQL and Redis (root, as on our machines).
system-deps:
	@command -v prometheus >/dev/null && command -v openssl >/dev/null \
	  && command -v redis-server >/dev/null && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends prometheus openssl redis-server postgresql >/dev/null; }

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

# docker-compose.yaml's deployment as processes (scripts/distributed_stack.py): the scheduled
# window, a killed triggerer. Part of `make test`.
.PHONY: distributed-test distributed-up distributed-stop
distributed-test: setup
	$(PYTEST) tests/distributed

distributed-up: setup
	$(PY) scripts/distributed_stack.py up

distributed-stop:
	$(PY) scripts/distributed_stack.py stop

# Benchmarks print ratios against a baseline run in the same process. They use a sandbox of
# their own (other ports) and stop it afterwards. bench/snapshot_scale.py reads the mesh with
# BENCH_NAMESPACES extra namespaces; bench/upgrade_scale.py runs the runbook, the floor and
# the DAG under airflow standalone (its own Airflow: BENCH_DEMO_ENV) on one sandbox per size
# of BENCH_SIZES (meshed namespaces in all), with kwok's pod-ready delay BENCH_POD_READY_MS;
# BENCH_WAVE_CONCURRENCY (one per size) overrides its defaults (50 -> 10, 200 -> 25);
# BENCH_ARGS passes more, e.g. BENCH_ARGS='--skip parse --json out/bench.json'.
BENCH_NAMESPACES ?= 200
BENCH_SIZES ?= 50 200
BENCH_POD_READY_MS ?= 5000
BENCH_WAVE_CONCURRENCY ?=
BENCH_ARGS ?=
# Ports below Linux's ephemeral range (32768-60999), where outgoing connections may hold them.
BENCH_ENV := SANDBOX_HOME=/tmp/istio-canary-bench SANDBOX_ETCD_PORT=23379 \
  SANDBOX_APISERVER_PORT=27443 SANDBOX_KWOK_PORT=31247 SANDBOX_KUBELET_PORT=31250 \
  SANDBOX_TRAFFIC_PORT=29564 \
  SANDBOX_PROMETHEUS_PORT=29190
BENCH_DEMO_ENV := DEMO_HOME=/tmp/istio-canary-bench-airflow DEMO_PORT=28180
.PHONY: bench
bench: setup
	@rc=0; \
	$(BENCH_ENV) sandbox/sandbox up --seed --extra-namespaces $(BENCH_NAMESPACES) \
	  > /tmp/istio-canary-bench.env && \
	  (. /tmp/istio-canary-bench.env && $(PY) bench/snapshot_scale.py) || rc=1; \
	$(BENCH_ENV) sandbox/sandbox down --purge; \
	$(BENCH_ENV) $(BENCH_DEMO_ENV) $(PY) bench/upgrade_scale.py --namespaces $(BENCH_SIZES) \
	  --pod-ready-ms $(BENCH_POD_READY_MS) \
	  $(if $(strip $(BENCH_WAVE_CONCURRENCY)),--wave-concurrency $(BENCH_WAVE_CONCURRENCY)) \
	  $(BENCH_ARGS) || rc=1; \
	$(BENCH_ENV) $(BENCH_DEMO_ENV) $(PY) scripts/demo.py stop; \
	$(BENCH_ENV) sandbox/sandbox down --purge; \
	exit $$rc

# The demo's run under `airflow standalone` and under the distributed stack, on one sandbox
# (TOPOLOGY_ARGS e.g. '--runs 3 --only distributed').
.PHONY: bench-topology
bench-topology: setup
	$(BENCH_ENV) $(BENCH_DEMO_ENV) $(PY) bench/topology.py --pod-ready-ms $(BENCH_POD_READY_MS) $(TOPOLOGY_ARGS)

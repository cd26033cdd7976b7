# mk/demo.mk -- the demo (a real Airflow running the DAG on the sandbox) and the browser check.
# Included by the Makefile, which provides `setup`, `venv`, PY and the PYTHONPATH and
# AIRFLOW__CORE__{DAGS,PLUGINS}_FOLDER exports.
#
#   make demo          sandbox + airflow standalone + one upgrade run, followed to its end;
#                      leaves both running for the UI (http://127.0.0.1:$(DEMO_PORT))
#   make demo-stop     stop the demo's Airflow and the sandbox
#   make demo-status   what of the demo runs
#   make browser-test  headless Chromium checks the UI (reuses a running demo, else starts
#                      its own sandbox and Airflow on other ports)
#
# DEMO_PORT (default 8080) and DEMO_HOME (default out/demo) move the demo; SANDBOX_HOME and
# SANDBOX_*_PORT move its sandbox (see sandbox/components.py).

DEMO_PORT ?= 8080
DEMO_HOME ?= $(CURDIR)/out/demo
DEMO_ENV = DEMO_PORT=$(DEMO_PORT) DEMO_HOME=$(DEMO_HOME)

.PHONY: demo demo-stop demo-status browser-deps browser-test

demo: setup
	@$(DEMO_ENV) $(PY) scripts/demo.py up

demo-stop:
	@$(DEMO_ENV) $(PY) scripts/demo.py stop

demo-status:
	@$(DEMO_ENV) $(PY) scripts/demo.py status

# Debian's Chromium (root, as on our machines); Playwright drives it and downloads nothing.
browser-deps:
	@command -v chromium >/dev/null || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium fonts-dejavu-core >/dev/null; }

browser-test: setup browser-deps
	$(DEMO_ENV) $(PY) -m pytest tests/standalone/test_ui.py

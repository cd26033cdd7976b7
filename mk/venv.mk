# mk/venv.mk -- project virtualenv built from the lock files.
#
# Standalone, from the repo root:
#   make -f mk/venv.mk venv     # create/refresh .venv; a no-op when it is up to date
#   make -f mk/venv.mk lock     # re-resolve requirements*.txt from requirements*.in
#                               # (keeps current pins; add UV_COMPILE_FLAGS=--upgrade to bump)
# Or `include mk/venv.mk` from a Makefile; that does not change its default goal.
# Needs only python3 (3.11) and PyPI. Paths are relative to the repo root: run make there.

_venv_mk_saved_goal := $(.DEFAULT_GOAL)

VENV ?= .venv
PYTHON3 ?= python3
UV_VERSION ?= 0.13.9
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
# Trust the OS certificate store (as pip does here), not only uv's bundled roots:
# without it uv fails TLS behind an intercepting proxy whenever SSL_CERT_FILE is unset.
UV_TLS_FLAGS ?= --system-certs
UV_COMPILE_FLAGS ?=
UV_COMPILE := $(UV) pip compile $(UV_TLS_FLAGS) --universal --python-version 3.11 $(UV_COMPILE_FLAGS)

.PHONY: venv lock

venv: $(VENV)/.installed

# Bare venv holding a pinned uv (no project packages yet).
$(UV):
	$(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	@touch $@

# Installs exactly the three locks (sync also removes anything not in them), then stamps.
LOCKS := requirements.txt requirements-dev.txt requirements-distributed.txt
$(VENV)/.installed: $(LOCKS) | $(UV)
	$(UV) pip sync $(UV_TLS_FLAGS) --python $(PY) $(LOCKS)
	@touch $@

lock: | $(UV)
	$(UV_COMPILE) requirements.in -o requirements.txt \
	  --custom-compile-command 'make -f mk/venv.mk lock  # = uv pip compile --universal --python-version 3.11 requirements.in -o requirements.txt'
	$(UV_COMPILE) requirements-dev.in -o requirements-dev.txt \
	  --custom-compile-command 'make -f mk/venv.mk lock  # = uv pip compile --universal --python-version 3.11 requirements-dev.in -o requirements-dev.txt'
	$(UV_COMPILE) requirements-distributed.in -o requirements-distributed.txt \
	  --custom-compile-command 'make -f mk/venv.mk lock  # = uv pip compile --universal --python-version 3.11 requirements-distributed.in -o requirements-distributed.txt'

# When included, leave the includer's default goal alone; standalone, default to `venv`.
ifneq ($(words $(MAKEFILE_LIST)),1)
.DEFAULT_GOAL := $(_venv_mk_saved_goal)
endif

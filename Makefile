# The two commands of the README: `make demo` and `make test`. Each sets itself up on a fresh
# machine: a virtual environment in .venv, the package with llama-cpp-python bindings-only, and the
# patched llama.cpp built into $TRITPACK_HOME (default ~/.cache/tritpack-gguf), cached by content.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tritpack-installed

.PHONY: setup build browser arm-tools test demo clean-venv
.DEFAULT_GOAL := test

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" $(BIN)/python -m pip install --quiet -e '.[test,cuda-compile]'
	touch $@

build: setup
	$(BIN)/tritpack-gguf build

# The browser that tests/test_webui.py drives: Debian's chromium and its chromedriver (same version),
# installed once with apt-get; where that cannot be done the test says so and skips.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver with apt-get (the web page test)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver >/dev/null; } || echo "note: apt-get could not install chromium; the web page test will skip"; \
	else echo "note: no chromium here and no root apt-get to install it; the web page test will skip"; fi

# The ARM64 cross build and its emulator that tests/test_arm.py uses: Debian's cross compilers and
# qemu-user, installed once with apt-get; where that cannot be done those tests skip and say why.
arm-tools:
	@if command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64 >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing gcc/g++-aarch64-linux-gnu and qemu-user with apt-get (the ARM64 tests)"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user >/dev/null; } || echo "note: apt-get could not install them; the ARM64 tests will skip"; \
	else echo "note: no aarch64 cross compiler or qemu-aarch64 here and no root apt-get to install them; the ARM64 tests will skip"; fi

test: build browser arm-tools
	$(BIN)/python -m pytest tests

demo: build
	$(BIN)/tritpack-gguf doctor
	$(BIN)/tritpack-gguf demo

clean-venv:
	rm -rf $(VENV)

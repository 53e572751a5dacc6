"""Shared fixtures: the patched llama.cpp build (built or found in the cache once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# `tritpack-gguf convert` makes an imatrix by default for small models (--imatrix small); the suite's
# command-line conversions run without one, as their expectations were written, except where a test
# asks for it (tests/test_imatrix_auto.py checks the default itself)
os.environ.setdefault("TRITPACK_IMATRIX_DEFAULT", "none")


@pytest.fixture(scope="session")
def patched_build():
    """The build of the current sources (cached by content: a no-op when nothing changed)."""
    from tritpack_gguf.build import build

    result = build()
    os.environ["TRITPACK_LIB_DIR"] = result.lib_dir
    return result


@pytest.fixture(scope="session")
def lib_dir(patched_build) -> Path:
    return Path(patched_build.lib_dir)


@pytest.fixture(scope="session")
def ggml(lib_dir):
    from tritpack_gguf.ggml_lib import load_ggml

    return load_ggml(lib_dir)


# ----------------------------------------------------------------------------- counts in the CI log

_COUNTS: list[str] = []


@pytest.fixture
def count_line():
    """count_line(text): a line for the end of the test run (what the fuzzer tried, the faults
    injected, the requests served), so that every CI log carries the counts docs/robustness.md quotes."""
    return _COUNTS.append


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _COUNTS:
        terminalreporter.section("tritpack counts")
        for line in _COUNTS:
            terminalreporter.write_line(line)

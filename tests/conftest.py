"""Generic test helpers: the execution-mode fixture (TFP's execution regimes),
and a process per test file for whole-suite runs (see ``file_processes.py``)."""

import os

import pytest

import file_processes

# Command lines and examples run by the tests compile from scratch and write no
# XLA cache under the home directory (test_compiled_and_dense tests the cache).
os.environ.setdefault("SENSODE_XLA_CACHE", "off")


def pytest_addoption(parser):
    file_processes.add_option(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    return file_processes.main(config)


# reference_problems.EXECUTION_MODES, spelled out: importing it imports TensorFlow,
# which the parent process of a whole-suite run does not need.
@pytest.fixture(params=["eager", "function", "xla"])
def execution_mode(request):
    """A function ``wrap(fn)`` running ``fn`` eagerly, in tf.function, or under XLA.

    ``wrap.mode`` is the mode's name.
    """
    from reference_problems import in_mode

    def wrap(fn):
        return in_mode(request.param, fn)

    wrap.mode = request.param
    return wrap

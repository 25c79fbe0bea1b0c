"""Generic test helpers: the execution-mode fixture (TFP's execution regimes)."""

import pytest

from reference_problems import EXECUTION_MODES, in_mode


@pytest.fixture(params=EXECUTION_MODES)
def execution_mode(request):
    """A function ``wrap(fn)`` running ``fn`` eagerly, in tf.function, or under XLA.

    ``wrap.mode`` is the mode's name.
    """

    def wrap(fn):
        return in_mode(request.param, fn)

    wrap.mode = request.param
    return wrap

"""Public import path of the Keras layers (``from sensode.keras import NeuralODE``).

The layers live in `sensode.frontends.keras`; this module only re-exports them,
so that ``import sensode`` does not import Keras.
"""

from .frontends.keras import *  # noqa: F401,F403
from .frontends.keras import __all__  # noqa: F401

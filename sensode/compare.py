"""``python -m sensode.compare``: the comparison command line (`sensode.frontends.cli`).

Importing it also gives the comparison library (`sensode.frontends.comparison`)
under its historical name, e.g. ``sensode.compare.compare_sensitivities``.
"""

from .frontends.comparison import *  # noqa: F401,F403
from .frontends.comparison import __all__  # noqa: F401

if __name__ == "__main__":
    import os

    # The BFC allocator keeps the statistics the peak-memory column reads on
    # CPU; chosen before TensorFlow creates its devices (see `comparison`).
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
    from .frontends.cli import run

    run()

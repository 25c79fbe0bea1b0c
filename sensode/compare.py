"""``python -m sensode.compare``: the comparison command line (`sensode.frontends.cli`).

Importing it also gives the comparison library (`sensode.frontends.comparison`)
under its historical name, e.g. ``sensode.compare.compare_sensitivities``.
"""

from .frontends.comparison import *  # noqa: F401,F403
from .frontends.comparison import __all__  # noqa: F401

if __name__ == "__main__":
    from .frontends.cli import run

    run()

"""Command line of the sensitivity comparison, run as ``python -m sensode.compare``.

Runs `sensode.compare_sensitivities` (see `sensode.comparison`) on a named
problem of `sensode.models` and prints the table; ``--json_out`` and
``--plot_out`` save the rows and the error-versus-time figure. Flags:
``python -m sensode.compare --help`` and ``docs/cli.md``.

Exit status: 0 when every requested algorithm ran (``ok`` or
``inaccurate``); 1 when one failed (each is named on stderr) or the
reference solve failed; 2 for a bad command line (one line on stderr naming
the flag and what it accepts); ``--help`` prints the flags and exits 0.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import tensorflow as tf

from .. import compilation_cache, models
from .comparison import BACKSOLVE_NOTE, compare_sensitivities, parse_sensealg
from ..ode.auto import AutoTsit5Rodas5
from ..ode.methods import BS3, DP5, DP8, Tsit5
from ..ode.rosenbrock import Rodas5, Rosenbrock23
from ..ode.sdirk import Kvaerno5

__all__ = ["define_flags", "main", "run", "EXIT_FAILED", "EXIT_USAGE"]

EXIT_FAILED = 1  # an algorithm (or the reference) failed
EXIT_USAGE = 2  # bad command line, as argparse and most Unix tools

_PROG = "python -m sensode.compare"
_METHODS = {c.__name__.lower(): c for c in (Tsit5, DP5, BS3, DP8, Rosenbrock23, Rodas5, Kvaerno5, AutoTsit5Rodas5)}
_HELP_ARGS = {"-h", "-?", "--help", "-help", "--helpshort", "--helpfull"}

# ----------------------------------------------------------------------------- flags


def _positive_finite(value) -> bool:
    return value is not None and math.isfinite(value) and value > 0


def _check_sensealgs(values) -> bool:
    from absl import flags

    for s in values or []:
        try:
            parse_sensealg(s)
        except ValueError as e:  # its message lists the allowed names
            raise flags.ValidationError(str(e).splitlines()[0]) from None
    return True


def define_flags():
    """Define the comparison's absl flags (once per process) and their validators."""
    from absl import flags

    if "problem" in flags.FLAGS:
        return
    flags.DEFINE_enum("problem", "lotka_volterra", sorted(models.PROBLEMS), "Named problem from sensode.models.")
    flags.DEFINE_float("rtol", 1e-6, "Relative tolerance of the compared solves (positive).")
    flags.DEFINE_float("atol", 1e-8, "Absolute tolerance of the compared solves (positive).")
    flags.DEFINE_string("alg", None, "Adaptive ODE method: Tsit5, DP5, BS3, DP8, or for stiff problems Rodas5, Rosenbrock23, "
                        "Kvaerno5, AutoTsit5Rodas5. Default Tsit5, and Rodas5 for the stiff models (" + ", ".join(sorted(models.STIFF)) + ").")
    flags.DEFINE_list("sensealgs", None, "Comma list, e.g. ForwardSensitivity,DiscreteAdjoint(checkpoints=4),"
                      "InterpolatingAdjoint; default: every applicable one.")
    flags.DEFINE_integer("saves", 11, "Equally spaced save times over tspan (t0 and t1 included).", lower_bound=2)
    flags.DEFINE_float("t1", None, "Override the problem's final time.")
    flags.DEFINE_integer("reps", 5, "Timed calls per algorithm after the first.", lower_bound=1)
    flags.DEFINE_integer("max_steps", 2000, "Step bound of every solve.", lower_bound=1)
    flags.DEFINE_bool("jit", None, "Compile with XLA (tf.function(jit_compile=True)); false: plain tf.function. Default: "
                      "XLA, except with a stiff method, whose gradients take 10 s to minutes each to compile.")
    flags.DEFINE_bool("fd", True, "Add the finite-difference check row.")
    flags.DEFINE_string("json_out", None, "Write the rows as JSON here.")
    flags.DEFINE_string("plot_out", None, "Write the error-versus-time figure here (needs matplotlib).")
    flags.DEFINE_string("xla_cache", None, compilation_cache.FLAG_HELP)
    # Validators run while parsing, so a bad value stops before any solve
    # (a negative tolerance used to become a table row and exit status 0).
    for name in ("rtol", "atol"):
        flags.register_validator(name, _positive_finite, message="must be a positive finite number")
    flags.register_validator("t1", lambda v: v is None or math.isfinite(v), message="must be a finite number")
    flags.register_validator("alg", lambda v: v is None or v.lower() in _METHODS, message="must be one of " + ", ".join(c.__name__ for c in _METHODS.values()))
    flags.register_validator("sensealgs", _check_sensealgs)


def _usage_error(message: str):
    print(f"{_PROG}: error: {message} (see --help)", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _print_help():
    from absl import flags

    print(f"usage: {_PROG} [--flag=value ...]\n")
    print(__doc__.split("\n\n")[1].replace("\n", " ") + "\n")
    print(flags.FLAGS.module_help(__name__))


def parse_flags(argv):
    """absl ``flags_parser``: help exits 0, any bad flag prints one line and exits 2."""
    from absl import flags

    if any(a.split("=", 1)[0] in _HELP_ARGS for a in argv[1:]):
        _print_help()
        sys.exit(0)
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        _usage_error(str(e).splitlines()[0])
    if len(rest) > 1:
        _usage_error(f"unexpected arguments {rest[1:]}; flags are written --name=value")
    if flags.FLAGS.t1 is not None:
        t0 = float(models.PROBLEMS[flags.FLAGS.problem]().tspan[0])
        if flags.FLAGS.t1 == t0:
            _usage_error(f"flag --t1={flags.FLAGS.t1}: must differ from the problem's t0 = {t0}")
    return rest


# ----------------------------------------------------------------------------- main


def main(argv):
    """CLI entry point: compare every sensitivity algorithm on a named problem.

    The loss is the mean of the squared saved states, ``mean(u**2)`` over ``[T, *u0.shape]``,
    and θ is every floating entry of ``p``. Returns the exit status (see the module docstring).
    """
    from absl import flags

    del argv
    FLAGS = flags.FLAGS
    alg_name = FLAGS.alg or ("Rodas5" if FLAGS.problem in models.STIFF else "Tsit5")
    alg = _METHODS[alg_name.lower()]()
    # XLA compiles of stiff gradients: HIRES 16-62 s a row (280 s in all against 141 s
    # in plain tf.function), POLLU over 10 minutes for the first row (256 s in all).
    jit = FLAGS.jit if FLAGS.jit is not None else not alg.stiff
    kwargs = {} if FLAGS.t1 is None else {"tspan": (0.0, FLAGS.t1)}
    prob = models.PROBLEMS[FLAGS.problem](**kwargs)
    t0, t1 = (float(x) for x in prob.tspan)
    saveat = tf.constant(np.linspace(t0, t1, FLAGS.saves), prob.u0.dtype)
    sensealgs = [parse_sensealg(s) for s in FLAGS.sensealgs] if FLAGS.sensealgs else None
    if sensealgs is None and alg.stiff:
        print(BACKSOLVE_NOTE, file=sys.stderr)
    start = time.perf_counter()
    try:
        result = compare_sensitivities(
            prob, lambda u: tf.reduce_mean(tf.square(u)), sensealgs=sensealgs, alg=alg, rtol=FLAGS.rtol,
            atol=FLAGS.atol, saveat=saveat, reps=FLAGS.reps, jit_compile=jit, max_steps=FLAGS.max_steps,
            finite_differences=FLAGS.fd, progress=lambda s: print(s, file=sys.stderr, flush=True),
        )
    except (RuntimeError, ValueError, TypeError) as e:  # the reference solve, or the problem itself
        print(f"{_PROG}: error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{FLAGS.problem}: loss mean(u**2) over {FLAGS.saves} save points")
    print(result)
    print(f"total wall time {time.perf_counter() - start:.1f} s")
    if FLAGS.json_out:
        with open(FLAGS.json_out, "w") as fh:
            fh.write(result.to_json())
        print(f"wrote {FLAGS.json_out}")
    if FLAGS.plot_out:
        try:
            result.plot(FLAGS.plot_out)
            print(f"wrote {FLAGS.plot_out}")
        except ImportError as e:
            print(f"no figure: {e}", file=sys.stderr)
    failed = [r for r in result.rows if r.status.startswith("failed")]
    if failed:
        # The table shows every row; the exit status and this line make a
        # failure visible to scripts and CI, which read neither.
        names = "; ".join(f"{r.sensealg} ({r.status[len('failed: '):]})" for r in failed)
        print(f"{_PROG}: error: {len(failed)} of {len(result.rows)} algorithms failed: {names}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def run(argv=None) -> None:
    """Define the flags and run `main` under absl (the body of ``python -m sensode.compare``)."""
    from absl import app

    compilation_cache.from_argv(sys.argv if argv is None else argv)
    define_flags()
    app.run(main, argv=argv, flags_parser=parse_flags)

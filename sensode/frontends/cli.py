"""Command line of the sensitivity comparison, run as ``python -m sensode.compare``.

Runs `sensode.compare_sensitivities` (see `sensode.comparison`) on a named
problem of `sensode.models` and prints the table; ``--json_out`` and
``--plot_out`` save the rows and the error-versus-time figure. Flags:
``python -m sensode.compare --help`` and ``docs/cli.md``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import tensorflow as tf

from .. import models
from .comparison import compare_sensitivities, parse_sensealg
from ..ode.methods import BS3, DP5, DP8, Tsit5

# ----------------------------------------------------------------------------- command line

_METHODS = {c.__name__.lower(): c for c in (Tsit5, DP5, BS3, DP8)}


def define_flags():
    from absl import flags

    flags.DEFINE_enum("problem", "lotka_volterra", sorted(models.PROBLEMS), "Named problem from sensode.models.")
    flags.DEFINE_float("rtol", 1e-6, "Relative tolerance of the compared solves.")
    flags.DEFINE_float("atol", 1e-8, "Absolute tolerance of the compared solves.")
    flags.DEFINE_string("alg", "Tsit5", "Adaptive ODE method: Tsit5, DP5, BS3 or DP8.")
    flags.DEFINE_list("sensealgs", None, "Comma list, e.g. ForwardSensitivity,DiscreteAdjoint(checkpoints=4),"
                      "InterpolatingAdjoint; default: every applicable one.")
    flags.DEFINE_integer("saves", 11, "Equally spaced save times over tspan (t0 and t1 included).", lower_bound=2)
    flags.DEFINE_float("t1", None, "Override the problem's final time.")
    flags.DEFINE_integer("reps", 5, "Timed calls per algorithm after the first.", lower_bound=1)
    flags.DEFINE_integer("max_steps", 2000, "Step bound of every solve.", lower_bound=1)
    flags.DEFINE_bool("jit", True, "Compile with XLA (tf.function(jit_compile=True)); false: plain tf.function.")
    flags.DEFINE_bool("fd", True, "Add the finite-difference check row.")
    flags.DEFINE_string("json_out", None, "Write the rows as JSON here.")
    flags.DEFINE_string("plot_out", None, "Write the error-versus-time figure here (needs matplotlib).")


def main(argv):
    """CLI entry point: compare every sensitivity algorithm on a named problem.

    The loss is the mean of the squared saved states, ``mean(u**2)`` over ``[T, *u0.shape]``,
    and θ is every floating entry of ``p``.
    """
    from absl import app, flags

    del argv
    FLAGS = flags.FLAGS
    try:
        alg = _METHODS[FLAGS.alg.lower()]()
    except KeyError:
        raise app.UsageError(f"unknown --alg={FLAGS.alg!r}; one of Tsit5, DP5, BS3, DP8") from None
    kwargs = {} if FLAGS.t1 is None else {"tspan": (0.0, FLAGS.t1)}
    prob = models.PROBLEMS[FLAGS.problem](**kwargs)
    t0, t1 = (float(x) for x in prob.tspan)
    saveat = tf.constant(np.linspace(t0, t1, FLAGS.saves), prob.u0.dtype)
    sensealgs = None
    if FLAGS.sensealgs:
        try:
            sensealgs = [parse_sensealg(s) for s in FLAGS.sensealgs]
        except ValueError as e:
            raise app.UsageError(str(e)) from None
    start = time.perf_counter()
    result = compare_sensitivities(
        prob, lambda u: tf.reduce_mean(tf.square(u)), sensealgs=sensealgs, alg=alg, rtol=FLAGS.rtol,
        atol=FLAGS.atol, saveat=saveat, reps=FLAGS.reps, jit_compile=FLAGS.jit, max_steps=FLAGS.max_steps,
        finite_differences=FLAGS.fd, progress=lambda s: print(s, file=sys.stderr, flush=True),
    )
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
    return 0


def run() -> None:
    """Define the flags and run `main` under absl (the body of ``python -m sensode.compare``)."""
    from absl import app

    define_flags()
    app.run(main)

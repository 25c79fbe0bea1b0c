"""Command line: ``python -m sensode.gsa --problem=lotka_volterra --method=sobol --n=4096``.

Draws the design over ``nominal p * (1 -/+ rel)`` (±50% by default), runs the
solves as compiled ensembles, prints a table of indices with bootstrap
confidence intervals; ``--json_out`` saves them, ``--plot_out`` draws them
(bar chart for a scalar output, stacked areas over time for
``--output=trajectory``; needs matplotlib). See ``docs/gsa.md``.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import tensorflow as tf

from .. import compilation_cache

METHODS = ("sobol", "morris", "dgsm")


def define_flags():
    from absl import flags

    from .analysis import DEFAULT_RANGES, OUTPUTS

    flags.DEFINE_enum("problem", "lotka_volterra", sorted(DEFAULT_RANGES), "Model of sensode.models (parameter vector p).")
    flags.DEFINE_enum("method", "sobol", list(METHODS), "sobol: first/total indices; morris: screening; dgsm: gradient measures.")
    flags.DEFINE_integer("n", 1024, "Base samples (sobol: N (D + 2) solves), trajectories (morris: r (D + 1) solves) "
                         "or gradient samples (dgsm).", lower_bound=2)
    flags.DEFINE_enum("output", "final", list(OUTPUTS), "Functional of one state component: final value, peak, "
                      "time integral, or the whole trajectory (time-resolved indices).")
    flags.DEFINE_integer("component", 0, "State component the output reads.", lower_bound=0)
    flags.DEFINE_float("rel", 0.5, "Ranges are nominal p * (1 -/+ rel).", lower_bound=1e-6)
    flags.DEFINE_integer("saves", 21, "Equally spaced save times over tspan.", lower_bound=2)
    flags.DEFINE_float("rtol", 1e-6, "Relative tolerance.")
    flags.DEFINE_float("atol", 1e-8, "Absolute tolerance.")
    flags.DEFINE_integer("max_steps", 5000, "Step bound of every solve.", lower_bound=1)
    flags.DEFINE_enum("stepping", "per_sample", ["per_sample", "shared"], "Per-sample step control or one shared step.")
    flags.DEFINE_integer("batch_size", 4096, "Samples per compiled ensemble.", lower_bound=1)
    flags.DEFINE_integer("resamples", 200, "Bootstrap resamples for the confidence intervals.", lower_bound=0)
    flags.DEFINE_float("conf", 0.95, "Confidence level.", lower_bound=0.5, upper_bound=0.999)
    flags.DEFINE_integer("seed", 0, "Seed of the design and the bootstrap.")
    flags.DEFINE_bool("jit", True, "Compile each ensemble with XLA.")
    flags.DEFINE_bool("progress", True, "Report solved samples on stderr.")
    flags.DEFINE_string("json_out", None, "Write the indices as JSON here.")
    flags.DEFINE_string("plot_out", None, "Write the figure here (needs matplotlib).")
    flags.DEFINE_string("xla_cache", None, compilation_cache.FLAG_HELP)


def parse_flags(argv):
    """absl parsing that reports a bad value in one line naming the flag and its allowed values."""
    from absl import flags

    if any(a in ("--help", "-h", "--helpshort", "-?") for a in argv[1:]):
        print(flags.FLAGS.main_module_help())  # absl's own --help exits with status 1
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        print(f"python -m sensode.gsa: {err}", file=sys.stderr)
        sys.exit(2)


def _table(result, method) -> str:
    keys = {"sobol": ("S1", "S1_conf", "ST", "ST_conf"), "morris": ("mu", "mu_star", "mu_star_conf", "sigma"),
            "dgsm": ("nu", "nu_conf", "bound", "bound_conf")}[method]
    rows = [f"{'parameter':<10}" + "".join(f"{k:>14}" for k in keys)]
    for i, name in enumerate(result.names):
        # Time-resolved results: the table shows the time average.
        vals = [float(np.mean(getattr(result, k)[i])) for k in keys]
        rows.append(f"{name:<10}" + "".join(f"{v:>14.4g}" for v in vals))
    return "\n".join(rows)


def main(argv):
    del argv
    from absl import flags

    from . import analysis, plotting

    F = flags.FLAGS
    prob, space = analysis.model_space(F.problem, F.rel)
    t0, t1 = (float(x) for x in prob.tspan)
    saveat = tf.constant(np.linspace(t0, t1, F.saves), prob.u0.dtype)
    n_state = int(prob.u0.shape.num_elements())
    if F.component >= n_state:
        print(f"python -m sensode.gsa: --component={F.component}: {F.problem} has {n_state} state components", file=sys.stderr)
        return 2
    model = analysis.ODEModel(
        prob, analysis.named_output(F.output, F.component), saveat=saveat, rtol=F.rtol, atol=F.atol,
        max_steps=F.max_steps, stepping=F.stepping, batch_size=F.batch_size, jit_compile=F.jit, progress=F.progress or None,
    )
    common = dict(seed=F.seed, num_resamples=F.resamples, conf_level=F.conf)
    start = time.perf_counter()
    if F.method == "sobol":
        result, solves = analysis.sobol(model, space, F.n, **common), F.n * (space.dim + 2)
    elif F.method == "morris":
        result, solves = analysis.morris(model, space, F.n, **common), F.n * (space.dim + 1)
    else:
        result, solves = analysis.dgsm(model, space, F.n, **common), F.n
    wall = time.perf_counter() - start
    print(f"{F.problem}: {F.method} indices of {F.output}(u[{F.component}]) over p * (1 -/+ {F.rel:g}); "
          f"{solves} solves, {model.failed} failed, {wall:.1f} s")
    print(_table(result, F.method))
    if F.json_out:
        with open(F.json_out, "w") as fh:
            json.dump({"problem": F.problem, "method": F.method, "output": F.output, "component": F.component,
                       "n": F.n, "solves": solves, "failed": model.failed, "seconds": wall,
                       "bounds": space.bounds.tolist(), "t": saveat.numpy().tolist(), "result": result.to_dict()}, fh)
        print(f"wrote {F.json_out}")
    if F.plot_out:
        try:
            plotting.plot(result, F.plot_out, t=saveat.numpy(), title=f"{F.problem}: {F.method}, {F.output}(u[{F.component}])")
            print(f"wrote {F.plot_out}")
        except ImportError as err:
            print(f"no figure: {err}", file=sys.stderr)
    return 0


def run():
    from absl import app

    compilation_cache.from_argv(sys.argv)
    define_flags()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()

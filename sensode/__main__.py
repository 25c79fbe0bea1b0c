"""Command-line demo: ``python -m sensode``.

Solves a named problem from `sensode.models` (Lotka--Volterra by default) with
an adaptive method, prints the solution summary, a table of the saved states
and the solver statistics, and, when SciPy is installed, compares the result
with a tight-tolerance SciPy reference and with SciPy's ``RK45`` at the same
tolerances.

Examples::

  python -m sensode
  python -m sensode --alg=DP5 --rtol=1e-8 --atol=1e-10
  python -m sensode --problem=van_der_pol --saves=21
  python -m sensode --alg=RK4 --dt=0.01
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf
from absl import app, flags

import sensode
from sensode import models

METHODS = {
    cls.__name__.lower(): cls
    for cls in (sensode.Euler, sensode.Midpoint, sensode.Heun, sensode.RK4, sensode.BS3, sensode.DP5, sensode.Tsit5, sensode.DP8)
}

_PROBLEM = flags.DEFINE_enum("problem", "lotka_volterra", sorted(models.PROBLEMS), "Named problem from sensode.models.")
_ALG = flags.DEFINE_string("alg", "Tsit5", f"ODE method, one of {', '.join(c.__name__ for c in METHODS.values())}.")
_RTOL = flags.DEFINE_float("rtol", 1e-6, "Relative tolerance.")
_ATOL = flags.DEFINE_float("atol", 1e-8, "Absolute tolerance.")
_DT = flags.DEFINE_float("dt", None, "Step size (required for the fixed-step methods Euler, Midpoint, Heun, RK4).")
_SAVES = flags.DEFINE_integer("saves", 11, "Number of equally spaced save times, t0 and t1 included.", lower_bound=2)
_MODE = flags.DEFINE_enum(
    "mode",
    "xla",
    ["eager", "function", "xla"],
    "How to run the solve: eagerly (op by op from Python, slow), in tf.function, or in tf.function(jit_compile=True).",
)
_COLUMNS = flags.DEFINE_integer("columns", 4, "Largest number of state components shown in the table.", lower_bound=1)

# Column names of the problems whose components have a meaning worth printing.
_COLUMN_NAMES = {
    "lotka_volterra": ["prey", "predator"],
    "van_der_pol": ["x", "dx/dt"],
    "lorenz": ["x", "y", "z"],
}


def _method(name: str) -> sensode.ode.methods.ODEMethod:
    try:
        return METHODS[name.lower()]()
    except KeyError:
        raise app.UsageError(f"unknown --alg={name!r}; choose one of {', '.join(c.__name__ for c in METHODS.values())}") from None


def _table(names, t, u) -> str:
    """A fixed-width table: one row per save time."""
    header = f"{'t':>8}  " + "  ".join(f"{n:>14}" for n in names)
    rows = [header, "-" * len(header)]
    for ti, ui in zip(t, u):
        rows.append(f"{ti:8.3f}  " + "  ".join(f"{x:14.8f}" for x in ui))
    return "\n".join(rows)


def _scipy_compare(name, ts, u, rtol, atol) -> None:
    """Print the max-abs difference to SciPy (tight DOP853) and SciPy's RK45 cost.

    SciPy integrates in float64, so the problem is rebuilt in float64 for it:
    a float32 right-hand side would keep DOP853 from ever meeting rtol=1e-12.
    """
    try:
        from scipy.integrate import solve_ivp
    except ImportError:
        print("\nSciPy not installed: skipping the comparison (pip install -e '.[test]').")
        return
    prob = models.PROBLEMS[name](dtype=tf.float64)
    dtype = prob.u0.dtype
    shape = prob.u0.shape

    def rhs(t, y):
        dy = prob.f(tf.constant(t, dtype), tf.constant(y.reshape(shape), dtype), prob.p)
        return dy.numpy().reshape(-1)

    y0 = prob.u0.numpy().reshape(-1).astype(np.float64)
    span = (float(ts[0]), float(ts[-1]))
    ref = solve_ivp(rhs, span, y0, method="DOP853", t_eval=ts, rtol=1e-12, atol=1e-14)
    rk45 = solve_ivp(rhs, span, y0, method="RK45", t_eval=ts, rtol=rtol, atol=atol)
    if not (ref.success and rk45.success):
        print(f"\nSciPy comparison failed: {ref.message} / {rk45.message}")
        return
    flat = u.reshape(len(ts), -1)
    print("\nComparison with SciPy (reference: solve_ivp DOP853, rtol=1e-12, atol=1e-14)")
    print(f"  sensode max |u - u_ref|          : {np.max(np.abs(flat - ref.y.T)):.3e}")
    print(f"  SciPy RK45 max |u - u_ref|       : {np.max(np.abs(rk45.y.T - ref.y.T)):.3e}")
    print(f"  SciPy RK45 function evaluations  : {rk45.nfev} (same rtol/atol)")


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    prob = models.PROBLEMS[_PROBLEM.value]()
    alg = _method(_ALG.value)
    if not alg.adaptive and _DT.value is None:
        raise app.UsageError(f"--alg={type(alg).__name__} is a fixed-step method: give --dt")
    dtype = prob.u0.dtype
    t0, t1 = (float(x) for x in prob.tspan)
    saveat = tf.constant(np.linspace(t0, t1, _SAVES.value), dtype)

    print(f"sensode {sensode.__version__}, TensorFlow {tf.__version__}")
    print(f"Problem: {_PROBLEM.value}  {prob!r}")
    print(f"Method: {type(alg).__name__} (order {alg.order}), rtol={_RTOL.value:g}, atol={_ATOL.value:g}\n")

    def run(saveat):
        # Inside tf.function nothing raises: the status is checked below. No
        # gradient is needed: DiscreteAdjoint() is the plain loop.
        return sensode.solve(
            prob,
            alg,
            saveat=saveat,
            rtol=_RTOL.value,
            atol=_ATOL.value,
            dt=_DT.value,
            sensealg=sensode.DiscreteAdjoint(),
            throw=False,
        )

    if _MODE.value != "eager":
        run = tf.function(run, jit_compile=_MODE.value == "xla")
    start = time.perf_counter()
    sol = run(saveat)
    elapsed = time.perf_counter() - start
    if int(sol.status) != 0:
        print(f"Solve failed: {sol.message} (status {int(sol.status)})")
        return 1

    print(sol.summary())
    ts = sol.t.numpy()
    u = sol.u.numpy()
    flat = u.reshape(len(ts), -1)
    ncols = min(flat.shape[1], _COLUMNS.value)
    names = _COLUMN_NAMES.get(_PROBLEM.value, [f"u[{i}]" for i in range(ncols)])[:ncols]
    suffix = "" if ncols == flat.shape[1] else f" (first {ncols} of {flat.shape[1]} components, flattened)"
    print(f"\nSolution at {len(ts)} save times{suffix}")
    print(_table(names, ts, flat[:, :ncols]))

    stats = {k: int(v) for k, v in sol.stats.items()}
    print("\nSolver statistics")
    print(f"  function evaluations : {stats['nfe']}")
    print(f"  steps attempted      : {stats['steps']}")
    print(f"  accepted / rejected  : {stats['accepted']} / {stats['rejected']}")
    print(f"  status               : {int(sol.status)} ({sol.message})")
    print(f"  wall time ({_MODE.value:8s}): {elapsed * 1e3:.1f} ms (first call: includes tracing" + (" and XLA compilation)" if _MODE.value == "xla" else ")"))

    _scipy_compare(_PROBLEM.value, ts, u, _RTOL.value, _ATOL.value)
    return 0


if __name__ == "__main__":
    app.run(main)  # exits with main's return value

"""Benchmark: implicit adjoint vs backprop through Newton; matrix-free GMRES vs dense LU.

Prints one JSON line per case.

1. ``adjoint_vs_unrolled``: reverse-mode gradient of a loss of the root of a
   1-D reaction--diffusion residual, by `DiscreteAdjoint` (one transposed
   solve) versus backpropagation through a fixed number of Newton iterations
   written as a plain Python loop under `tf.GradientTape` (eager: the tape keeps
   every iteration's intermediates, which is the memory we want to measure).
   Peak memory: Python's `tracemalloc` does not see TF's C++ allocations and
   ``tf.config.experimental.get_memory_info`` is not supported on CPU, so we
   report the growth of the process's resident set size (`resource`'s
   ``ru_maxrss`` high-water mark cannot go down, so each case runs in a fresh
   subprocess). Numbers are MiB above the baseline after TF import and warm-up.
2. ``gmres_vs_lu``: time of one Newton solve plus gradient, with
   ``NewtonKrylov`` + ``GMRES`` adjoint versus ``NewtonRaphson`` + ``LU``, as
   ``n`` grows (in `tf.function`, second call timed).

Usage:
  python benchmarks/nonlinear_adjoint.py                 # quick: n <= 2000
  python benchmarks/nonlinear_adjoint.py --sizes=100,1000,2000,5000,10000
"""

import json
import resource
import subprocess
import sys
import time

from absl import app, flags

SIZES = flags.DEFINE_list("sizes", ["100", "500", "1000", "2000"], "n for the GMRES vs LU comparison")
ITERS = flags.DEFINE_list("iters", ["5", "10", "20", "40"], "Newton iteration counts for the memory comparison")
MEM_N = flags.DEFINE_integer("mem_n", 2000, "unknowns for the memory comparison")
CASE = flags.DEFINE_string("case", "", "internal: run one memory case in this process")


def problem(n):
    """The reaction--diffusion steady state of `sensode.models` (SPD tridiagonal Jacobian)."""
    import sensode as so

    prob = so.models.reaction_diffusion_steady_state(n)
    return prob.f, prob.p


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory_case(kind, iters, n):
    import tensorflow as tf

    import sensode as so

    residual, params = problem(n)
    u0 = tf.zeros(n, tf.float64)

    def adjoint():
        with tf.GradientTape() as tape:
            tape.watch(params)
            # abstol=0 forces exactly `iters` Newton iterations (status MAX_ITERS, ignored).
            sol = so.solve(so.NonlinearProblem(residual, u0, params), so.NewtonRaphson(), max_iters=iters,
                           abstol=1e-300, reltol=1e-300, throw=False)
            loss = tf.reduce_sum(sol.u**2)
        return tape.gradient(loss, params)

    def unrolled():
        with tf.GradientTape() as tape:
            tape.watch(params)
            u = u0
            for _ in range(iters):
                fu = residual(u, params)
                # The Newton step, differentiated through (the step itself by
                # a differentiable dense solve: GMRES's loop has no gradient).
                with tf.GradientTape() as inner:
                    inner.watch(u)
                    r = residual(u, params)
                j = inner.jacobian(r, u)
                u = u - tf.linalg.solve(j, fu[:, None])[:, 0]
            loss = tf.reduce_sum(u**2)
        return tape.gradient(loss, params)

    fn = adjoint if kind == "adjoint" else unrolled
    fn()  # warm-up (traces pfor functions)
    base = rss_mib()
    t = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t
    return {"bench": "adjoint_vs_unrolled", "method": kind, "n": n, "newton_iters": iters,
            "time_s": round(elapsed, 4), "peak_rss_growth_mib": round(rss_mib() - base, 1),
            "memory_measure": "ru_maxrss growth (fresh subprocess)"}


def gmres_vs_lu(n):
    import tensorflow as tf

    import sensode as so

    residual, params = problem(n)
    out = []
    for label, alg, sensealg in [
        ("LU", so.NewtonRaphson(), so.DiscreteAdjoint()),
        ("GMRES", so.NewtonKrylov(), so.DiscreteAdjoint(linsolve=so.linsolve.GMRES())),
    ]:
        @tf.function
        def run(params):
            with tf.GradientTape() as tape:
                tape.watch(params)
                sol = so.solve(so.NonlinearProblem(residual, tf.zeros(n, tf.float64), params), alg,
                               sensealg=sensealg, abstol=1e-9, reltol=1e-12)
                loss = tf.reduce_sum(sol.u**2)
            return sol.status, sol.iterations, tape.gradient(loss, params)["s"]

        run(params)
        t = time.perf_counter()
        status, iters, _ = run(params)
        elapsed = time.perf_counter() - t
        out.append({"bench": "gmres_vs_lu", "linsolve": label, "n": n, "time_s": round(elapsed, 4),
                    "newton_iters": int(iters), "status": int(status)})
    return out


def main(argv):
    del argv
    if CASE.value:
        kind, iters = CASE.value.split(":")
        print(json.dumps(memory_case(kind, int(iters), MEM_N.value)))
        return
    for iters in ITERS.value:
        for kind in ("adjoint", "unrolled"):
            cmd = [sys.executable, __file__, f"--case={kind}:{iters}", f"--mem_n={MEM_N.value}"]
            res = subprocess.run(cmd, capture_output=True, text=True)
            line = [l for l in res.stdout.splitlines() if l.startswith("{")]
            print(line[-1] if line else json.dumps({"bench": "adjoint_vs_unrolled", "method": kind, "error": res.stderr[-500:]}), flush=True)
    for n in SIZES.value:
        for row in gmres_vs_lu(int(n)):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    app.run(main)

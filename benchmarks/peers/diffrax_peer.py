"""diffrax (JAX, CPU, jit) on sensode's non-stiff workloads; run in the peers virtualenv.

    /work/peers-venv/bin/python benchmarks/peers/diffrax_peer.py --data=/tmp/sensode_peers/workloads.npz

(the ``.npz`` is written by ``benchmarks/peers_benchmark.py --write_data``). See
``_harness.py`` for the modes and the JSON fields. Workloads, as in
``benchmarks/sensitivity_benchmark.py``:

* ``lotka_volterra``: 4 rates, t in [0, 10], 101 saves, float64, rtol 1e-6,
  atol 1e-8, loss the sum of squares of every saved state; gradient ``[dL/dp]``.
* ``neural_ode_mlp``: 2-64-64-2 tanh MLP (weights from sensode's NumPy
  initialisation, passed in the ``.npz``), batch 512, t in [0, 1], 10 saves,
  float32, rtol 1e-5, atol 1e-6, loss the mean of squares at t = 1; gradient
  ``[w0, b0, w1, b1, w2, b2]``.
* ``linear100``: ``u' = A u``, 100 states, ``A`` the parameter, t in [0, 1],
  float64, rtol 1e-6, atol 1e-8, loss ``|u(1)|^2``; gradient ``[dL/dA]``.

Solvers ``Dopri5`` and ``Tsit5``, ``PIDController`` (diffrax's default
I-controller), ``max_steps`` as sensode's benchmark; gradients with
``RecursiveCheckpointAdjoint`` (diffrax's default: backprop through the solver
with recursive checkpointing) and ``BacksolveAdjoint`` (continuous adjoint,
the state re-integrated backwards). ``evaluations``: vector-field calls
counted with ``jax.debug.callback`` in a separately compiled copy (forward:
a forward solve; gradient: the whole gradient call, and ``backward`` its
excess over the forward solve). diffrax reports no evaluation statistics of
its own, only ``num_steps``, ``num_accepted_steps`` and ``num_rejected_steps``
of the forward solve.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _harness import main  # noqa: E402

LIBRARY = f"diffrax {diffrax.__version__} (jax {jax.__version__})"
MLP_KEYS = ("w0", "b0", "w1", "b1", "w2", "b2")
SOLVERS = {"Dopri5": diffrax.Dopri5, "Tsit5": diffrax.Tsit5}
ADJOINTS = {"RecursiveCheckpointAdjoint": diffrax.RecursiveCheckpointAdjoint,
            "BacksolveAdjoint": diffrax.BacksolveAdjoint}

_COUNT = [0]


def _tick():
    _COUNT[0] += 1


def lv_f(t, u, p):
    x, y = u[..., 0], u[..., 1]
    return jnp.stack([p[0] * x - p[1] * x * y, -p[2] * y + p[3] * x * y], axis=-1)


def mlp_f(t, u, p):
    h = jnp.tanh(u @ p["w0"] + p["b0"])
    h = jnp.tanh(h @ p["w1"] + p["b1"])
    return h @ p["w2"] + p["b2"]


def lin_f(t, u, a):
    return a @ u


def workload(data, name):
    """(f, u0, params, ts, t0, t1, rtol, atol, max_steps, loss, params_to_list)."""
    if name == "lotka_volterra":
        cfg = data["lv_cfg"]
        return (lv_f, jnp.asarray(data["lv_u0"]), jnp.asarray(data["lv_p"]), jnp.asarray(data["lv_ts"]), cfg,
                lambda ys: jnp.sum(ys**2), lambda g: [g])
    if name == "neural_ode_mlp":
        cfg = data["mlp_cfg"]
        p = {k: jnp.asarray(data[f"mlp_{k}"], jnp.float32) for k in MLP_KEYS}
        return (mlp_f, jnp.asarray(data["mlp_u0"], jnp.float32), p, jnp.asarray(data["mlp_ts"], jnp.float32), cfg,
                lambda ys: jnp.mean(ys[-1] ** 2), lambda g: [g[k] for k in MLP_KEYS])
    if name == "linear100":
        cfg = data["lin_cfg"]
        return (lin_f, jnp.asarray(data["lin_u0"]), jnp.asarray(data["lin_A"]), jnp.asarray(data["lin_ts"]), cfg,
                lambda ys: jnp.sum(ys[-1] ** 2), lambda g: [g])
    raise ValueError(name)


def solver_fn(data, name, solver, adjoint=None, count=False):
    f, u0, p, ts, cfg, loss, to_list = workload(data, name)
    t0, t1, rtol, atol, max_steps = (float(x) for x in cfg)
    dtype = u0.dtype
    t0, t1 = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
    if count:
        def vf(t, u, args):
            jax.debug.callback(_tick)
            return f(t, u, args)
    else:
        vf = f
    term = diffrax.ODETerm(vf)
    ctrl = diffrax.PIDController(rtol=rtol, atol=atol)
    adj = ADJOINTS[adjoint]() if adjoint else diffrax.RecursiveCheckpointAdjoint()

    def solve(params):
        return diffrax.diffeqsolve(term, SOLVERS[solver](), t0, t1, None, u0, args=params,
                                   saveat=diffrax.SaveAt(ts=ts), stepsize_controller=ctrl, adjoint=adj,
                                   max_steps=int(max_steps))

    return solve, p, loss, to_list


def forward_factory(name, solver):
    def make(data):
        solve, p, loss, _ = solver_fn(data, name, solver)
        run = jax.jit(lambda q: (loss(solve(q).ys), solve(q).stats["num_steps"]))

        def call():
            l_, steps = jax.block_until_ready(run(p))
            return {"loss": float(l_), "steps": int(steps)}

        def extra():
            csolve, cp, closs, _ = solver_fn(data, name, solver, count=True)
            crun = jax.jit(lambda q: closs(csolve(q).ys))
            jax.block_until_ready(crun(cp))
            jax.effects_barrier()
            _COUNT[0] = 0
            jax.block_until_ready(crun(cp))
            jax.effects_barrier()
            return {"evaluations": {"forward": _COUNT[0]}}

        return call, extra

    return make


def gradient_factory(name, solver, adjoint):
    def make(data):
        solve, p, loss, to_list = solver_fn(data, name, solver, adjoint)

        def lossfn(q):
            sol = solve(q)
            return loss(sol.ys), sol.stats["num_steps"]

        run = jax.jit(jax.value_and_grad(lossfn, has_aux=True))

        def call():
            (l_, steps), g = jax.block_until_ready(run(p))
            return {"loss": float(l_), "grad": [np.asarray(x) for x in to_list(g)], "steps": int(steps)}

        def extra():
            ev = {}
            for kind in ("forward", "gradient"):
                csolve, cp, closs, _ = solver_fn(data, name, solver, adjoint, count=True)
                if kind == "forward":
                    crun = jax.jit(lambda q: closs(csolve(q).ys))
                else:
                    crun = jax.jit(jax.grad(lambda q: closs(csolve(q).ys)))
                jax.block_until_ready(crun(cp))
                jax.effects_barrier()
                _COUNT[0] = 0
                jax.block_until_ready(crun(cp))
                jax.effects_barrier()
                ev[kind] = _COUNT[0]
            ev["backward"] = ev["gradient"] - ev["forward"]
            return {"evaluations": ev}

        return call, extra

    return make


TABLE = {}
for _w in ("lotka_volterra", "neural_ode_mlp", "linear100"):
    for _s in SOLVERS:
        TABLE[(_w, "forward", f"diffrax.{_s}")] = forward_factory(_w, _s)
        for _a in ADJOINTS:
            TABLE[(_w, "gradient", f"diffrax.{_s}.{_a}")] = gradient_factory(_w, _s, _a)

if __name__ == "__main__":
    main(LIBRARY, TABLE)

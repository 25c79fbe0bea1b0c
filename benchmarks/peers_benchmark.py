"""sensode against its peers (diffrax, CasADi/CVODES, SciPy) on the same workloads, interleaved.

Runs in sensode's environment. The peers are benchmark baselines only, never
dependencies of sensode: install them in a separate virtualenv outside the
repository and pass its interpreter::

  python -m venv /work/peers-venv
  /work/peers-venv/bin/pip install diffrax jax jaxlib casadi scipy numpy
  python benchmarks/peers_benchmark.py --peers_python=/work/peers-venv/bin/python

Without ``--peers_python`` only sensode's side runs (and the workload data is
written for the peer scripts in ``benchmarks/peers/``, which can also run on
their own; see ``benchmarks/peers/_harness.py``).

Workloads (the same arrays go to every library through an ``.npz`` written
here, from `sensode.models`' NumPy initialisations):

* ``lotka_volterra``: 4 rates, t in [0, 10], 101 saves, float64, rtol 1e-6,
  atol 1e-8, loss the sum of squares of all saved states, ``max_steps`` 2000.
* ``neural_ode_mlp``: 2-64-64-2 tanh MLP, batch 512, t in [0, 1], 10 saves,
  float32, rtol 1e-5, atol 1e-6, loss the mean of squares at t = 1,
  ``max_steps`` 200; gradient w.r.t. the 4,482 weights.
* ``linear100``: ``u' = A u``, 100 states, gradient w.r.t. ``A`` (10,000
  entries), t in [0, 1], float64, rtol 1e-6, atol 1e-8, loss ``|u(1)|^2``,
  ``max_steps`` 500.
  (These three are ``benchmarks/sensitivity_benchmark.py``'s cases.) sensode
  `DP5` and `Tsit5` against diffrax ``Dopri5`` and ``Tsit5``; sensode's
  gradients with `DiscreteAdjoint`, `BacksolveAdjoint`, `InterpolatingAdjoint`,
  `QuadratureAdjoint` (and `ForwardSensitivity` on Lotka--Volterra); diffrax's
  with ``RecursiveCheckpointAdjoint`` and ``BacksolveAdjoint``.
* stiff, loss ``sum(u(t1)^2)``: ``robertson`` (t to 1e5, rtol 1e-6, atol
  1e-10, parameters ``log k``), ``van_der_pol_mu1000`` (t to 3000) and
  ``hires`` (t to 321.8122), both rtol 1e-6, atol 1e-8; and
  ``robertson_ngroups10`` / ``robertson_ngroups100``: Robertson duplicated
  10 and 100 times (30 and 300 states, pydiffsol's scaling; the sensode state
  ``[ngroups, 3]`` through `sensode.models.robertson`, the peers' a flat
  group-major vector), the groups uncoupled, sharing the three ``log k`` (a
  3-entry gradient), group ``g`` starting from ``[1 - 0.001 g / ngroups, 0,
  0]`` so that no two groups are identical; same span and tolerances as
  ``robertson``; sensode's stiff methods there with
  ``linsolve=BlockDiagonalLU(3)`` (the groups' structure, as SciPy gets the
  sparse pattern; ``--ngroups_dense`` adds the dense LU). sensode `Rodas5`
  (forward; gradient with `DiscreteAdjoint` and
  `QuadratureAdjoint` by default; ``--stiff_sensealgs`` adds `ForwardSensitivity`
  and `InterpolatingAdjoint`, which compile for minutes) against CasADi's CVODES
  (forward, forward sensitivities, adjoint) and SciPy ``Radau`` / ``BDF``
  with the analytic Jacobian (``Radau`` with forward sensitivities for the
  gradient; block diagonal and sparse for the duplicated Robertson).
* ``fit_lotka_volterra``: ``examples/fit_lotka_volterra.py`` end to end (a
  fresh process: imports, compilation, fit) against SciPy ``least_squares``
  on the same data (``benchmarks/peers/scipy_peer.py``), also in a fresh
  process. Off unless listed in ``--workloads`` (it takes minutes).

Everything of sensode's runs in ``tf.function(jit_compile=True)``; the first
call (tracing and compilation) is timed apart (``compile_s``), as are the
peers' (JAX jit). Rounds: each round times every measurement of a workload
for sensode and then for the peers (the order reversed on odd rounds), each
peer a long-lived subprocess answering requests, so that a loaded machine's
load falls on both. ``seconds`` is the median of all timed calls of all
rounds. ``os.getloadavg()`` is recorded with each measurement and round.

Output, JSON lines: a header; one line per measurement and round while it
runs (``"partial": true``); then per measurement its pooled line
(``library``, ``name``, ``workload``, ``kind``, ``seconds``, ``n``,
``evaluations`` where available, ``loss``, ``steps``); then ``ratio`` lines:
sensode's best over each peer's best for each workload and kind (also per
method pair: DP5 / Dopri5, Tsit5 / Tsit5), with ``loss_rel_diff``
(``|L_s - L_p| / |L_p|``) and ``grad_rel_diff`` (``|g_s - g_p| / |g_p|``)
between the two (``.accurate``: the best among gradients within 1e-3 of the
reference on both sides), and each one's ``grad_rel_err`` against the reference where
one exists (SciPy DOP853 sensitivities at rtol 1e-12 for Lotka--Volterra,
SciPy Radau sensitivities at tolerances 1e-4 times smaller for the stiff
problems); and ``evaluations`` lines comparing backward evaluation counts.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

import sensode  # noqa: E402
from sensode import models  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NONSTIFF = ("lotka_volterra", "neural_ode_mlp", "linear100")
STIFF = ("robertson", "van_der_pol_mu1000", "hires", "robertson_ngroups10", "robertson_ngroups100")
# The duplicated Robertson workloads time sensode with linsolve=BlockDiagonalLU(3) (about 2 minutes of compilation
# for both; 10 ms forward, 38 ms gradient at 300 states). With the dense LU (--ngroups_dense=Rodas5) a 300-state call
# takes 1-19 s and its compilation minutes.
DEFAULT = NONSTIFF + STIFF
ALL = NONSTIFF + STIFF + ("fit_lotka_volterra",)

_PEERS = flags.DEFINE_string("peers_python", None, "Interpreter of the peers virtualenv (diffrax, jax, casadi, scipy).")
_WORKLOADS = flags.DEFINE_list("workloads", list(DEFAULT), f"Any of {', '.join(ALL)} (by default all but "
                               "fit_lotka_volterra).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds (times pooled over rounds).", lower_bound=1)
_TARGET = flags.DEFINE_float("target_s", 0.4, "Aim for this many seconds of timed calls per measurement and round.")
_MIN_REPS = flags.DEFINE_integer("min_reps", 3, "Fewest timed calls per measurement and round.", lower_bound=1)
_MAX_REPS = flags.DEFINE_integer("max_reps", 40, "Most timed calls per measurement and round.", lower_bound=1)
_METHODS = flags.DEFINE_list("methods", ["DP5", "Tsit5"], "sensode explicit methods (non-stiff workloads).")
_STIFF_METHODS = flags.DEFINE_list("stiff_methods", ["Rodas5"], "sensode stiff methods.")
_SENSEALGS = flags.DEFINE_list(
    "sensealgs", ["DiscreteAdjoint", "BacksolveAdjoint", "InterpolatingAdjoint", "QuadratureAdjoint", "ForwardSensitivity"],
    "sensode sensitivity algorithms to time (ForwardSensitivity only on Lotka-Volterra and the stiff problems, "
    "BacksolveAdjoint not on the stiff problems).")
_STIFF_SENSEALGS = flags.DEFINE_list(
    "stiff_sensealgs", ["DiscreteAdjoint", "QuadratureAdjoint", "ForwardSensitivity"],
    "sensode sensitivity algorithms on the stiff problems (InterpolatingAdjoint with Rodas5 compiles for minutes; "
    "ForwardSensitivity compiles two to three times longer than DiscreteAdjoint: Robertson 26 s, HIRES 73 s).")
_NGROUPS_DENSE = flags.DEFINE_list(
    "ngroups_dense", [], "Stiff methods also timed with the dense LU on robertson_ngroups* (by default only with "
    "linsolve=BlockDiagonalLU(3), the groups' structure, as SciPy gets the sparse Jacobian pattern).")
_OUT = flags.DEFINE_string("out", "/tmp/sensode_peers", "Folder for the workload data and the peers' gradients.")
_REANALYZE = flags.DEFINE_list("reanalyze", [], "Recompute the ratio, accuracy and evaluation lines from the JSON "
                                "lines of earlier runs (files; their gradient files must still exist) and exit.")
_FIT_ROUNDS = flags.DEFINE_integer("fit_rounds", 1, "Rounds of the end-to-end fit comparison.", lower_bound=1)


GROUPS = (10, 100)  # robertson_ngroups{n}


def rober_groups_u0(n):
    """[n, 3]: group g starts from [1 - 0.001 g / n, 0, 0] (group 0 is the standard problem)."""
    u0 = np.zeros((n, 3))
    u0[:, 0] = 1.0 - 1e-3 * np.arange(n) / n
    return u0


ACCURATE = 1e-3  # ".accurate" ratios: both gradients within this relative error of the reference


def load():
    return round(os.getloadavg()[0], 2)


# --- workload data (written once, read by every library) ------------------------------


def workload_data() -> dict:
    d = {}
    lv = models.lotka_volterra(tspan=(0.0, 10.0))
    d["lv_u0"], d["lv_p"], d["lv_ts"] = lv.u0.numpy(), lv.p.numpy(), np.linspace(0.0, 10.0, 101)
    d["lv_cfg"] = np.array([0.0, 10.0, 1e-6, 1e-8, 2000.0])
    mlp = models.neural_ode_mlp(tspan=(0.0, 1.0), dtype=tf.float32)  # Glorot weights from NumPy seed 0
    d["mlp_u0"] = mlp.u0.numpy()
    for k, v in mlp.p.items():
        d[f"mlp_{k}"] = v.numpy()
    d["mlp_ts"] = np.linspace(0.0, 1.0, 10).astype(np.float32)
    d["mlp_cfg"] = np.array([0.0, 1.0, 1e-5, 1e-6, 200.0])
    lin = models.linear(n=100)
    d["lin_u0"], d["lin_A"], d["lin_ts"] = lin.u0.numpy(), lin.p.numpy(), np.array([1.0])
    d["lin_cfg"] = np.array([0.0, 1.0, 1e-6, 1e-8, 500.0])
    rob = models.robertson(log_rates=True)
    d["rober_u0"], d["rober_p"], d["rober_cfg"] = rob.u0.numpy(), rob.p.numpy(), np.array([0.0, 1e5, 1e-6, 1e-10, 20000.0])
    for n in GROUPS:
        grp = models.robertson(u0=rober_groups_u0(n), log_rates=True)
        d[f"rober{n}_u0"], d[f"rober{n}_p"] = grp.u0.numpy().ravel(), grp.p.numpy()  # group-major, [3 n]
        d[f"rober{n}_cfg"] = d["rober_cfg"]
    vdp = models.van_der_pol(mu=1000.0, tspan=(0.0, 3000.0))
    d["vdp_u0"], d["vdp_p"] = vdp.u0.numpy(), np.atleast_1d(vdp.p.numpy())
    d["vdp_cfg"] = np.array([0.0, 3000.0, 1e-6, 1e-8, 20000.0])
    hi = models.hires()
    d["hires_u0"], d["hires_p"], d["hires_cfg"] = hi.u0.numpy(), hi.p.numpy(), np.array([0.0, 321.8122, 1e-6, 1e-8, 20000.0])
    return d


# --- sensode's side -------------------------------------------------------------------

MLP_KEYS = ("w0", "b0", "w1", "b1", "w2", "b2")
PREFIX = {"lotka_volterra": "lv", "neural_ode_mlp": "mlp", "linear100": "lin", "robertson": "rober",
          "van_der_pol_mu1000": "vdp", "hires": "hires", "robertson_ngroups10": "rober10",
          "robertson_ngroups100": "rober100"}


def problem(data, name):
    """(ODEProblem, saveat or None, rtol, atol, max_steps, loss(u), grads -> list)."""
    pre = PREFIX[name]
    t0, t1, rtol, atol, max_steps = (float(x) for x in data[f"{pre}_cfg"])
    if name == "lotka_volterra":
        prob = models.lotka_volterra(p=data["lv_p"], u0=data["lv_u0"], tspan=(t0, t1))
        return prob, tf.constant(data["lv_ts"]), rtol, atol, int(max_steps), lambda u: tf.reduce_sum(u**2), lambda g: [g]
    if name == "neural_ode_mlp":
        base = models.neural_ode_mlp(tspan=(t0, t1), dtype=tf.float32)
        p = {k: tf.constant(data[f"mlp_{k}"], tf.float32) for k in MLP_KEYS}
        prob = sensode.ODEProblem(base.f, tf.constant(data["mlp_u0"], tf.float32), (t0, t1), p)
        return (prob, tf.constant(data["mlp_ts"], tf.float32), rtol, atol, int(max_steps),
                lambda u: tf.reduce_mean(u[-1] ** 2), lambda g: [g[k] for k in MLP_KEYS])
    if name == "linear100":
        prob = models.linear(A=data["lin_A"], u0=data["lin_u0"], tspan=(t0, t1))
        return (prob, tf.constant(data["lin_ts"]), rtol, atol, int(max_steps), lambda u: tf.reduce_sum(u[-1] ** 2),
                lambda g: [g])
    if name == "robertson":
        prob = models.robertson(u0=data["rober_u0"], tspan=(t0, t1), log_rates=True).remake(p=tf.constant(data["rober_p"]))
    elif name.startswith("robertson_ngroups"):  # the state [ngroups, 3] (the peers' flat vector, group-major)
        # At 300 states (above linear.UNROLL_UNDER_XLA) DiscreteAdjoint does not compile under XLA on 2 December:
        # the pfor Jacobian's gradient of this f's u[..., i] slices (StridedSliceGrad with dynamic bounds); the
        # same f with tf.unstack compiles. Reported as an error line, not skipped.
        prob = models.robertson(u0=data[f"{pre}_u0"].reshape(-1, 3), tspan=(t0, t1), log_rates=True)
        prob = prob.remake(p=tf.constant(data[f"{pre}_p"]))
    elif name == "van_der_pol_mu1000":
        prob = models.van_der_pol(mu=float(data["vdp_p"][0]), u0=data["vdp_u0"], tspan=(t0, t1))
        prob = prob.remake(p=tf.constant(data["vdp_p"]))  # p as a [1] vector, as the peers'
        f = prob.f
        prob = sensode.ODEProblem(lambda t, u, p: f(t, u, p[0]), prob.u0, prob.tspan, prob.p)
    elif name == "hires":
        prob = models.hires(k=data["hires_p"], u0=data["hires_u0"], tspan=(t0, t1))
    else:
        raise ValueError(name)
    return prob, None, rtol, atol, int(max_steps), lambda u: tf.reduce_sum(u[-1] ** 2), lambda g: [g]


def method(name):
    """``"Rodas5"``, or ``"Rodas5@block3"``: with ``linsolve=sensode.linsolve.BlockDiagonalLU(3)``."""
    base, _, block = name.partition("@block")
    return getattr(sensode, base)(linsolve=sensode.linsolve.BlockDiagonalLU(int(block))) if block else getattr(sensode, base)()


def sensealg(name):
    return getattr(sensode, name)()


def sensode_forward(data, wl, mname):
    prob, ts, rtol, atol, max_steps, loss, _ = problem(data, wl)

    @tf.function(jit_compile=True)
    def run(u0, p):
        sol = sensode.solve(prob.remake(u0=u0, p=p), method(mname), saveat=ts, rtol=rtol, atol=atol,
                            max_steps=max_steps, throw=False)
        return loss(sol.u), sol.status, {k: v for k, v in sol.stats.items()}

    def call():
        l_, status, stats = run(prob.u0, prob.p)
        return {"loss": float(l_), "status": int(status), "steps": int(stats["steps"]),
                "evaluations": {k: int(v) for k, v in stats.items() if k != "steps"}}

    return call


def sensode_gradient(data, wl, mname, aname):
    prob, ts, rtol, atol, max_steps, loss, to_list = problem(data, wl)

    @tf.function(jit_compile=True)
    def run(u0, p):
        with tf.GradientTape() as tape:
            tape.watch(p)
            sol = sensode.solve(prob.remake(u0=u0, p=p), method(mname), saveat=ts, rtol=rtol, atol=atol,
                                max_steps=max_steps, sensealg=sensealg(aname), throw=False)
            l_ = loss(sol.u)
        return l_, tape.gradient(l_, p), sol.status, sol.stats["steps"], sol.stats["nfe"]

    def call():
        l_, g, status, steps, nfe = run(prob.u0, prob.p)
        return {"loss": float(l_), "grad": [np.asarray(x.numpy(), np.float64) for x in to_list(g)],
                "status": int(status), "steps": int(steps), "nfe_forward": int(nfe)}

    def extra():
        if aname not in ("BacksolveAdjoint", "InterpolatingAdjoint", "QuadratureAdjoint"):
            note = {"DiscreteAdjoint": "reverse sweep: one VJP per forward evaluation",
                    "ForwardSensitivity": "no backward pass"}.get(aname, "")
            return {"evaluations_note": note}

        @tf.function(jit_compile=True)
        def back(u0, p):
            sol = sensode.solve(prob.remake(u0=u0, p=p), method(mname), saveat=ts, rtol=rtol, atol=atol,
                                max_steps=max_steps, throw=False)
            with tf.GradientTape() as tape:
                tape.watch(sol.u)
                l_ = loss(sol.u)
            res = sensode.adjoint_sensitivities(sol, sensealg=sensealg(aname), dgdu_discrete=tape.gradient(l_, sol.u),
                                                rtol=rtol, atol=atol, max_steps=max_steps, throw=False)
            return sol.stats["nfe"], res.stats

        nfe, stats = back(prob.u0, prob.p)
        return {"evaluations": {"forward": int(nfe), "backward": int(stats["nfe"]),
                                "backward_steps": int(stats.get("steps", -1))},
                "evaluations_note": "backward: sensode.adjoint_sensitivities stats (same options)"}

    return call, extra


def sensode_table(workloads):
    table = {}
    for wl in workloads:
        if wl in NONSTIFF:
            for m in _METHODS.value:
                table[(wl, "forward", f"sensode.{m}")] = lambda d, wl=wl, m=m: sensode_forward(d, wl, m)
                for a in _SENSEALGS.value:
                    if a == "ForwardSensitivity" and wl != "lotka_volterra":
                        continue  # tangent seeds of 4.5k x 512 x 2 / 10,100 x 100 x 100: not a contender
                    table[(wl, "gradient", f"sensode.{m}.{a}")] = lambda d, wl=wl, m=m, a=a: sensode_gradient(d, wl, m, a)
        elif wl in STIFF:
            names = list(_STIFF_METHODS.value)
            if wl.startswith("robertson_ngroups"):  # uncoupled groups: the block-diagonal Jacobian declared
                names = [f"{m}@block3" for m in names] + [m for m in names if m in _NGROUPS_DENSE.value]
            for m in names:
                table[(wl, "forward", f"sensode.{m}")] = lambda d, wl=wl, m=m: sensode_forward(d, wl, m)
                for a in _STIFF_SENSEALGS.value:
                    table[(wl, "gradient", f"sensode.{m}.{a}")] = lambda d, wl=wl, m=m, a=a: sensode_gradient(d, wl, m, a)
    return table


def LocalRunner(table, data, out):
    """sensode's measurements in this process: the peers' own `Runner` (NumPy only), so the fields match."""
    sys.path.insert(0, os.path.join(HERE, "peers"))
    from _harness import Runner

    return Runner(f"sensode {sensode.__version__} (tensorflow {tf.__version__})", table, data, out)


class PeerProcess:
    """A peer script in ``--serve`` mode: one JSON request, one JSON line back."""

    def __init__(self, python, script, data_file, out):
        env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
        self.log = open(os.path.join(out, os.path.basename(script) + ".stderr"), "w")
        self.proc = subprocess.Popen([python, os.path.join(HERE, "peers", script), "--serve", f"--data={data_file}",
                                      f"--out={out}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env=env)
        self.keys = {tuple(k) for k in self.request({"list": True})["keys"]}

    def request(self, req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        while True:
            raw = self.proc.stdout.readline()
            if not raw:
                raise RuntimeError(f"peer exited (see {self.log.name})")
            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                continue  # stray output

    def measure(self, key, reps):
        return self.request({"workload": key[0], "kind": key[1], "name": key[2], "reps": reps})

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()


# --- comparison ----------------------------------------------------------------------


def grads_of(line):
    f = line.get("grad_file")
    if not f:
        return None
    z = np.load(f)
    return np.concatenate([np.ravel(z[k]).astype(np.float64) for k in sorted(z.files, key=lambda s: int(s.split("_")[1]))])


def rel(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def pooled(lines):
    """One line per key from its per-round lines: median over every timed call."""
    first = lines[0]
    times = [t for ln in lines for t in ln.get("times", [])]
    out = {k: v for k, v in lines[-1].items() if k not in ("times", "partial", "round")}
    out["seconds"] = statistics.median(times) if times else None
    out["n"] = len(times)
    out["round_medians"] = [ln.get("seconds") for ln in lines]
    out["loads"] = [ln.get("load") for ln in lines]
    out["compile_s"] = first.get("compile_s")
    return out


def ratio_lines(results, refs):
    """sensode's best over each peer's best per workload and kind; also per method pair."""
    out = []
    by = {}
    for (wl, kind, name), ln in results.items():
        if ln.get("seconds") is None or ln.get("error") or ln.get("status", 0) != 0:
            continue
        lib = name.split(".")[0]
        by.setdefault((wl, kind, lib), []).append(ln)
    pairs = [("", lambda ln: True, lambda ln: True)]
    pairs += [(".DP5_vs_Dopri5", lambda ln: ".DP5" in ln["name"], lambda ln: ".Dopri5" in ln["name"]),
              (".Tsit5_vs_Tsit5", lambda ln: ".Tsit5" in ln["name"], lambda ln: ".Tsit5" in ln["name"]),
              (".vs_Radau", lambda ln: True, lambda ln: ".Radau" in ln["name"])]
    def accurate(ln):
        g = grads_of(ln)
        return g is not None and ln["workload"] in refs and rel(g, refs[ln["workload"]]) <= ACCURATE

    for (wl, kind, lib), peer_lines in sorted(by.items()):
        if lib == "sensode" or (wl, kind, "sensode") not in by:
            continue
        variants = list(pairs)
        if kind == "gradient" and wl in refs:
            variants.append((".accurate", accurate, accurate))
        for tag, s_ok, p_ok in variants:
            if tag and tag != ".accurate" and (lib == "scipy") != (tag == ".vs_Radau"):
                continue
            s_c = [ln for ln in by[(wl, kind, "sensode")] if s_ok(ln)]
            p_c = [ln for ln in peer_lines if p_ok(ln)]
            if not s_c or not p_c:
                continue
            s, p = min(s_c, key=lambda x: x["seconds"]), min(p_c, key=lambda x: x["seconds"])
            line = {"ratio": f"{wl}/{kind}{tag}", "sensode": s["name"], "peer": p["name"],
                    "sensode_s": s["seconds"], "peer_s": p["seconds"], "sensode_over_peer": round(s["seconds"] / p["seconds"], 3),
                    "loss_rel_diff": float(f"{abs(s['loss'] - p['loss']) / abs(p['loss']):.3e}"),
                    "steps": [s.get("steps"), p.get("steps")], "load": load()}
            gs, gp = grads_of(s), grads_of(p)
            if gs is not None and gp is not None:
                line["grad_rel_diff"] = float(f"{rel(gs, gp):.3e}")
                if wl in refs:
                    line["grad_rel_err_vs_reference"] = [float(f"{rel(gs, refs[wl]):.3e}"), float(f"{rel(gp, refs[wl]):.3e}")]
            out.append(line)
    return out


def accuracy_lines(results, refs):
    out = []
    for (wl, kind, name), ln in sorted(results.items()):
        g = grads_of(ln) if kind == "gradient" else None
        if g is not None and wl in refs:
            out.append({"accuracy": name, "workload": wl, "grad_rel_err_vs_reference": float(f"{rel(g, refs[wl]):.3e}"),
                        "status": ln.get("status", 0)})
    return out


def evaluation_lines(results):
    out = []
    for wl in NONSTIFF:
        for sm, pm in (("DP5", "Dopri5"), ("Tsit5", "Tsit5")):
            s = results.get((wl, "gradient", f"sensode.{sm}.BacksolveAdjoint"))
            p = results.get((wl, "gradient", f"diffrax.{pm}.BacksolveAdjoint"))
            if s and p and "evaluations" in s and "evaluations" in p:
                sb, pb = s["evaluations"]["backward"], p["evaluations"]["backward"]
                out.append({"evaluations": f"{wl}/BacksolveAdjoint/{sm}_vs_{pm}", "sensode_backward": sb,
                            "diffrax_backward": pb, "ratio": round(sb / pb, 3),
                            "sensode_forward": s["evaluations"]["forward"], "diffrax_forward": p["evaluations"]["forward"]})
    return out


def reanalyze(files):
    results, refs = {}, {}
    for path in files:
        with open(path) as fh:
            for raw in fh:
                if not raw.startswith("{"):
                    continue
                ln = json.loads(raw)
                if "library" not in ln or "workload" not in ln:
                    continue
                key = (ln["workload"], ln["kind"], ln["name"])
                if ln["kind"] == "reference" and ln.get("grad_file"):
                    refs[ln["workload"]] = grads_of(ln)
                elif not ln.get("partial") and "round_medians" in ln:
                    results[key] = ln
    for line in ratio_lines(results, refs):
        print(json.dumps(line), flush=True)
    for line in accuracy_lines(results, refs):
        print(json.dumps(line), flush=True)
    for line in evaluation_lines(results):
        print(json.dumps(line), flush=True)


# --- the end-to-end fit ---------------------------------------------------------------


def fit_round(peers_python, data_file, out):
    lines = []
    start = time.perf_counter()
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "fit_lotka_volterra.py"),
                        f"--png={os.path.join(out, 'fit_lotka_volterra.png')}"], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    m = re.search(r"fit with \S+: ([\d.]+) s", r.stdout)
    lines.append({"library": f"sensode {sensode.__version__}", "name": "examples/fit_lotka_volterra.py",
                  "workload": "fit_lotka_volterra", "kind": "fit", "seconds": wall, "in_script_fit_s": float(m.group(1)) if m else None,
                  "returncode": r.returncode, "summary": r.stdout.strip().splitlines()[-8:], "load": load()})
    if peers_python:
        for variant in ("DOP853", "RK45"):
            start = time.perf_counter()
            r = subprocess.run([peers_python, os.path.join(HERE, "peers", "scipy_peer.py"), f"--data={data_file}",
                                f"--out={out}", "--reps=0", f"--only=fit_lotka_volterra/fit/scipy.least_squares.{variant}"],
                               capture_output=True, text=True)
            wall = time.perf_counter() - start
            peer = json.loads(r.stdout.strip().splitlines()[-1])
            lines.append({**peer, "seconds": wall, "in_process_fit_s": peer.get("compile_s"), "load": load()})
    return lines


# --- main -----------------------------------------------------------------------------


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _REANALYZE.value:
        return reanalyze(_REANALYZE.value)
    out = _OUT.value
    os.makedirs(out, exist_ok=True)
    data = workload_data()
    data_file = os.path.join(out, "workloads.npz")
    np.savez(data_file, **data)
    workloads = [w for w in _WORKLOADS.value]
    for w in workloads:
        if w not in ALL:
            raise app.UsageError(f"unknown workload {w!r}; choose from {', '.join(ALL)}")
    print(json.dumps({"benchmark": "peers", "sensode": sensode.__version__, "tensorflow": tf.__version__,
                      "python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg(),
                      "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
                      "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                            cwd=ROOT).stdout.strip(),
                      "sensode_uncommitted": subprocess.run(["git", "status", "--short", "sensode"], capture_output=True,
                                                            text=True, cwd=ROOT).stdout.split("\n")[:-1],
                      "peers_python": _PEERS.value, "workloads": workloads, "rounds": _ROUNDS.value,
                      "data": data_file}), flush=True)
    runners = {"sensode": LocalRunner(sensode_table(workloads), data, out)}
    if _PEERS.value:
        for lib, script in (("diffrax", "diffrax_peer.py"), ("casadi", "casadi_peer.py"), ("scipy", "scipy_peer.py")):
            try:
                runners[lib] = PeerProcess(_PEERS.value, script, data_file, out)
            except Exception as e:  # a missing peer is reported, the others still run
                print(json.dumps({"peer": lib, "error": repr(e)[:300]}), flush=True)
    keys = {lib: [k for k in (r.table if lib == "sensode" else r.keys) if k[0] in workloads and k[1] != "fit"]
            for lib, r in runners.items()}
    per_round = {}
    estimate = {}
    for rnd in range(_ROUNDS.value):
        order = list(runners)
        if rnd % 2:
            order = order[::-1]
        for wl in workloads:
            for lib in order:
                for key in [k for k in keys[lib] if k[0] == wl]:
                    if key[1] == "reference":
                        reps = 0
                        if rnd:
                            continue
                    else:
                        est = estimate.get((lib, key))
                        reps = _MIN_REPS.value if est is None else int(min(_MAX_REPS.value, max(
                            _MIN_REPS.value, math.ceil(_TARGET.value / max(est, 1e-6)))))
                    try:
                        line = runners[lib].measure(key, reps)
                    except Exception as e:
                        line = {"library": lib, "name": key[2], "workload": key[0], "kind": key[1], "error": repr(e)[:300]}
                    line["round"] = rnd
                    if line.get("seconds") is not None:
                        estimate[(lib, key)] = line["seconds"]
                    per_round.setdefault(key, []).append(line)
                    print(json.dumps({**{k: v for k, v in line.items() if k not in ("times", "u1")}, "partial": True}),
                          flush=True)
        print(json.dumps({"round_done": rnd, "load": os.getloadavg()}), flush=True)
    results = {key: pooled(lines) for key, lines in per_round.items() if not lines[0].get("error")}
    for key, lines in per_round.items():
        if lines[0].get("error"):
            print(json.dumps(lines[0]), flush=True)
    for key, line in sorted(results.items()):
        if key[1] != "reference":
            print(json.dumps({k: v for k, v in line.items() if k != "u1"}), flush=True)
    refs = {}
    for key, line in results.items():
        if key[1] == "reference":
            refs[key[0]] = grads_of(line)
    for line in ratio_lines({k: v for k, v in results.items() if k[1] != "reference"}, refs):
        print(json.dumps(line), flush=True)
    for line in accuracy_lines(results, refs):
        print(json.dumps(line), flush=True)
    for line in evaluation_lines(results):
        print(json.dumps(line), flush=True)
    for lib, r in runners.items():
        if isinstance(r, PeerProcess):
            r.close()
    if "fit_lotka_volterra" in workloads:
        fits = []
        for _ in range(_FIT_ROUNDS.value):
            for line in fit_round(_PEERS.value, data_file, out):
                fits.append(line)
                print(json.dumps({**line, "partial": True}), flush=True)
        s = statistics.median([f["seconds"] for f in fits if f["name"].startswith("examples/")])
        for variant in ("DOP853", "RK45"):
            p = [f["seconds"] for f in fits if f["name"].endswith(variant)]
            if p:
                print(json.dumps({"ratio": f"fit_lotka_volterra/end_to_end/{variant}", "sensode_s": s,
                                  "peer_s": statistics.median(p), "sensode_over_peer": round(s / statistics.median(p), 3),
                                  "load": load()}), flush=True)
    print(json.dumps({"done": True, "load": os.getloadavg(),
                      "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}), flush=True)


if __name__ == "__main__":
    app.run(main)

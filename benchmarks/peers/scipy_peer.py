"""SciPy baselines: stiff forward solves and forward-sensitivity gradients, and the Lotka--Volterra fit.

Runs in the peers virtualenv (plain NumPy/SciPy; see ``_harness.py`` for the
modes and the JSON fields):

    /work/peers-venv/bin/python benchmarks/peers/scipy_peer.py --data=/tmp/sensode_peers/workloads.npz

* stiff forward (``robertson`` t to 1e5 rtol 1e-6 atol 1e-10, and the same
  duplicated ``robertson_ngroups10`` / ``robertson_ngroups100``, 30 and 300
  states; ``van_der_pol_mu1000`` t to 3000 and ``hires`` t to 321.8122 at
  rtol 1e-6 atol 1e-8): ``solve_ivp`` ``Radau`` and ``BDF`` with the
  analytic Jacobian (``stiff_rhs.py``; block diagonal and ``scipy.sparse``
  for the duplicated Robertson, which SciPy then factors with ``splu``:
  dense costs up to 5x more at 300 states); loss ``sum(u(t1)^2)``.
* stiff gradient (``scipy.Radau.forward_sensitivity``): ``Radau`` on the state
  and its forward sensitivities ``S' = J S + f_p`` integrated together
  (``n (1 + m)`` equations, same tolerances, the Newton matrix block-diagonal
  in ``J``, as CVODES's simultaneous corrector; sparse for the duplicated
  Robertson), ``dL/dp = 2 u(t1)^T S(t1)``. Robertson's parameters are ``log k``
  (the duplicated ones: the same three, shared by every group); Van der
  Pol's ``mu``; HIRES's the 12 rate constants. ``evaluations``: ``nfev`` / ``njev`` of ``solve_ivp``.
* references (kind ``reference``): the same Radau sensitivities with rtol and
  atol 1e-4 times smaller, and Lotka--Volterra's ``dL/dp`` from DOP853
  sensitivities at rtol 1e-12 / atol 1e-14.
* ``fit_lotka_volterra`` (kind ``fit``): ``least_squares`` (TRF,
  2-point finite-difference Jacobian) on the data of
  ``examples/fit_lotka_volterra.py`` (p = [1.5, 1, 3, 1], u0 = [1, 1], 20
  times on (0, 5], noise 0.05 from ``default_rng(0)``, clean data from DOP853
  at rtol 1e-12), log parameters from ``p * [0.8, 1.2, 0.85, 1.15]``, the
  model solved by ``solve_ivp`` at rtol 1e-10 / atol 1e-12 with DOP853 or
  (names ending ``.RK45``) SciPy's default RK45; reports the
  estimates and Gauss--Newton standard errors. Its ``loss`` is the final sum
  of squared residuals.
"""

from __future__ import annotations

import os
import sys

# One BLAS thread: OpenBLAS's threads on these small matrices cost 17x on a loaded
# 2-core machine (HIRES sensitivities, 104 equations: 14 s against 0.8 s).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import scipy  # noqa: E402
from scipy import sparse  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402
from scipy.optimize import least_squares  # noqa: E402
from _harness import main  # noqa: E402
from stiff_rhs import PROBLEMS, unpack  # noqa: E402

LIBRARY = f"scipy {scipy.__version__}"


def forward_factory(name, method):
    f, jac, _, _ = PROBLEMS[name]

    def make(data):
        u0, p, (t0, t1, rtol, atol) = unpack(data, name)
        rhs = lambda t, u: f(u, p)  # noqa: E731
        jf = lambda t, u: jac(u, p)  # noqa: E731

        def call():
            r = solve_ivp(rhs, (t0, t1), u0, method=method, rtol=rtol, atol=atol, jac=jf)
            return {"loss": float(np.sum(r.y[:, -1] ** 2)), "status": int(r.status), "steps": int(r.t.size - 1),
                    "evaluations": {"nfev": int(r.nfev), "njev": int(r.njev), "nlu": int(r.nlu)},
                    "u1": r.y[:, -1].tolist()}

        return call

    return make


def sensitivity_factory(name, tighten=1.0):
    f, jac, jac_p, _ = PROBLEMS[name]

    def make(data):
        u0, p, (t0, t1, rtol, atol) = unpack(data, name)
        rtol, atol = rtol * tighten, atol * tighten
        n, m = u0.size, p.size

        def rhs(t, z):
            u = z[:n]
            s = z[n:].reshape(n, m)
            return np.concatenate([f(u, p), (jac(u, p) @ s + jac_p(u, p)).ravel()])

        def jz(t, z):
            j = jac(z[:n], p)
            if sparse.issparse(j):  # robertson_ngroups*: S's block is kron(J, I_m) in this layout
                return sparse.block_diag([j, sparse.kron(j, sparse.identity(m), format="csc")], format="csc")
            big = np.zeros((n * (1 + m), n * (1 + m)))
            big[:n, :n] = j
            # S is row-major [n, m]: column c of S has stride m.
            for c in range(m):
                idx = n + np.arange(n) * m + c
                big[np.ix_(idx, idx)] = j
            return big

        z0 = np.concatenate([u0, np.zeros(n * m)])

        def call():
            r = solve_ivp(rhs, (t0, t1), z0, method="Radau", rtol=rtol, atol=atol, jac=jz)
            u1 = r.y[:n, -1]
            s1 = r.y[n:, -1].reshape(n, m)
            return {"loss": float(np.sum(u1**2)), "grad": [2.0 * u1 @ s1], "status": int(r.status),
                    "steps": int(r.t.size - 1),
                    "evaluations": {"nfev": int(r.nfev), "njev": int(r.njev), "nlu": int(r.nlu)}}

        return call

    return make


def lv_reference(data):
    """Lotka--Volterra ``dL/dp`` (sum of squares of the saved states): DOP853 sensitivities, rtol 1e-12."""
    a, b, c, d = data["lv_p"]
    ts = data["lv_ts"]

    def rhs(t, y):
        x, z = y[:2]
        s = y[2:].reshape(2, 4)
        jac = np.array([[a - b * z, -b * x], [d * z, -c + d * x]])
        fp = np.array([[x, -x * z, 0.0, 0.0], [0.0, 0.0, -z, x * z]])
        return np.concatenate([[a * x - b * x * z, -c * z + d * x * z], (jac @ s + fp).ravel()])

    def call():
        r = solve_ivp(rhs, (ts[0], ts[-1]), np.concatenate([data["lv_u0"], np.zeros(8)]), method="DOP853",
                      t_eval=ts, rtol=1e-12, atol=1e-14)
        u = r.y[:2].T
        s = r.y[2:].T.reshape(-1, 2, 4)
        return {"loss": float(np.sum(u**2)), "grad": [np.einsum("ti,tij->j", 2.0 * u, s)]}

    return call


TRUE_P = np.array([1.5, 1.0, 3.0, 1.0])


def lv_rhs(t, u, p):
    x, y = u
    return [p[0] * x - p[1] * x * y, -p[2] * y + p[3] * x * y]


def fit_factory(method):
    return lambda data: _fit(data, method)


def _fit(data, method):
    t1, points, noise = 5.0, 20, 0.05
    times = np.linspace(t1 / points, t1, points)
    clean = solve_ivp(lv_rhs, (0.0, t1), [1.0, 1.0], method="DOP853", t_eval=times, rtol=1e-12, atol=1e-14,
                      args=(TRUE_P,)).y.T
    obs = clean + noise * np.random.default_rng(0).normal(size=clean.shape)
    x0 = np.log(TRUE_P * [0.8, 1.2, 0.85, 1.15])

    def resid(x):
        r = solve_ivp(lv_rhs, (0.0, t1), [1.0, 1.0], method=method, t_eval=times, rtol=1e-10, atol=1e-12,
                      args=(np.exp(x),))
        if r.status != 0:
            return np.full(obs.size, 1e6)
        return (r.y.T - obs).ravel()

    def call():
        res = least_squares(resid, x0)
        j = res.jac
        dof = res.fun.size - res.x.size
        s2 = float(res.fun @ res.fun) / dof
        cov = s2 * np.linalg.inv(j.T @ j)  # in log parameters
        est = np.exp(res.x)
        se = est * np.sqrt(np.diag(cov))  # delta method to the rates
        return {"loss": float(res.fun @ res.fun), "estimates": est.tolist(), "std_errors": se.tolist(),
                "sigma": float(np.sqrt(s2)), "evaluations": {"nfev": int(res.nfev)}, "status": int(res.status)}

    return call


TABLE = {}
for _w in PROBLEMS:
    TABLE[(_w, "forward", "scipy.Radau")] = forward_factory(_w, "Radau")
    TABLE[(_w, "forward", "scipy.BDF")] = forward_factory(_w, "BDF")
    TABLE[(_w, "gradient", "scipy.Radau.forward_sensitivity")] = sensitivity_factory(_w)
    TABLE[(_w, "reference", "scipy.Radau.forward_sensitivity.tol_x1e-4")] = sensitivity_factory(_w, 1e-4)
TABLE[("lotka_volterra", "reference", "scipy.DOP853.forward_sensitivity.rtol1e-12")] = lv_reference
TABLE[("fit_lotka_volterra", "fit", "scipy.least_squares.DOP853")] = fit_factory("DOP853")
TABLE[("fit_lotka_volterra", "fit", "scipy.least_squares.RK45")] = fit_factory("RK45")

if __name__ == "__main__":
    main(LIBRARY, TABLE)

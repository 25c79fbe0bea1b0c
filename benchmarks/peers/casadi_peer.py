"""CasADi's CVODES integrator on the stiff workloads; run in the peers virtualenv.

    /work/peers-venv/bin/python benchmarks/peers/casadi_peer.py --data=/tmp/sensode_peers/workloads.npz

See ``_harness.py`` for the modes and the JSON fields. Workloads (``stiff_rhs.py``,
data from the shared ``.npz``): ``robertson`` (t to 1e5, rtol 1e-6, atol 1e-10,
parameters ``log k``), ``robertson_ngroups10`` and ``robertson_ngroups100``
(the same duplicated 10 and 100 times, 30 and 300 states, the three ``log k``
shared by all groups; the SX right-hand side is the single-group formulas
group by group), ``van_der_pol_mu1000`` (t to 3000, parameter ``mu``)
and ``hires`` (t to 321.8122, the 12 rates), both at rtol 1e-6, atol 1e-8.
Loss ``sum(u(t1)^2)``.

* ``casadi.cvodes`` (forward): ``integrator('F', 'cvodes', dae, t0, t1)``,
  BDF with Newton and a direct linear solver on CasADi's exact symbolic
  Jacobian (CasADi's defaults; its ``linear_solver`` ``qr`` is a sparse QR on
  the Jacobian's pattern, so the duplicated Robertson's block diagonal is
  exploited), called numerically.
* ``casadi.cvodes.forward_sensitivity`` (gradient): an MX function of the
  parameters returning the loss and ``jtimes(loss, p, I, False)`` (one
  forward-sensitivity direction per parameter, CVODES's forward sensitivity
  module, sensitivities in the error test: CasADi's default).
* ``casadi.cvodes.adjoint`` (gradient): the same with
  ``jtimes(loss, p, 1, True)``: one CVODES adjoint (backward) solve with
  checkpointing.

``evaluations``: CVODES statistics of the forward solve from ``F.stats()``
(``nfevals``, ``nsteps``, ``nlinsetups``); the derivative solves' own
statistics are not exposed through the MX function.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import casadi as ca  # noqa: E402
import numpy as np  # noqa: E402
from _harness import main  # noqa: E402
from stiff_rhs import PROBLEMS, unpack  # noqa: E402

LIBRARY = f"casadi {ca.__version__}"


def build(data, name):
    f = PROBLEMS[name][0]
    u0, p0, (t0, t1, rtol, atol) = unpack(data, name)
    x = ca.SX.sym("x", u0.size)
    p = ca.SX.sym("p", p0.size)
    dae = {"x": x, "p": p, "ode": ca.vertcat(*f(x, p, xp=ca))}
    opts = {"reltol": rtol, "abstol": atol, "max_num_steps": 200000}
    integ = ca.integrator("F", "cvodes", dae, t0, t1, opts)
    return integ, u0, p0


def stats_of(integ):
    s = integ.stats()
    keep = ("nfevals", "nsteps", "nlinsetups", "nfevalsB", "nstepsB", "netfails", "nniters")
    return {k: int(s[k]) for k in keep if k in s}


def forward_factory(name):
    def make(data):
        integ, u0, p0 = build(data, name)

        def call():
            xf = np.asarray(integ(x0=u0, p=p0)["xf"]).ravel()
            return {"loss": float(np.sum(xf**2)), "u1": xf.tolist()}

        def extra():
            call()
            return {"evaluations": stats_of(integ)}

        return call, extra

    return make


def gradient_factory(name, mode):
    def make(data):
        integ, u0, p0 = build(data, name)
        P = ca.MX.sym("P", p0.size)
        xf = integ(x0=ca.DM(u0), p=P)["xf"]
        loss = ca.sumsqr(xf)
        if mode == "forward":
            grad = ca.jtimes(loss, P, ca.DM.eye(p0.size), False).T
        else:
            grad = ca.jtimes(loss, P, ca.DM(1.0), True)
        fn = ca.Function("g", [P], [loss, grad])

        def call():
            l_, g = fn(p0)
            return {"loss": float(l_), "grad": [np.asarray(g).ravel()]}

        def extra():
            integ(x0=u0, p=p0)
            return {"evaluations": {"forward_solve": stats_of(integ)}}

        return call, extra

    return make


TABLE = {}
for _w in PROBLEMS:
    TABLE[(_w, "forward", "casadi.cvodes")] = forward_factory(_w)
    TABLE[(_w, "gradient", "casadi.cvodes.forward_sensitivity")] = gradient_factory(_w, "forward")
    TABLE[(_w, "gradient", "casadi.cvodes.adjoint")] = gradient_factory(_w, "adjoint")

if __name__ == "__main__":
    main(LIBRARY, TABLE)

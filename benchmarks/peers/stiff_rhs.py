"""NumPy right-hand sides, state Jacobians and parameter Jacobians of the stiff workloads.

Shared by the SciPy and CasADi peers (CasADi builds its own symbolic
expressions from the same formulas with ``xp=casadi``). Parameters as in
`sensode.models`: Robertson ``log k`` (``robertson(log_rates=True)``), Van der
Pol ``mu``, HIRES the 12 rate constants. ``robertson_ngroups10`` and
``robertson_ngroups100``: Robertson duplicated 10 and 100 times (30 and 300
states, group-major: ``u[3 g + i]`` is species ``i`` of group ``g``), the
groups uncoupled and sharing the three ``log k``; their state Jacobian is
block diagonal, returned as a ``scipy.sparse`` CSC matrix (SciPy's Radau
and BDF then factor it with ``splu``).
"""

from __future__ import annotations

import numpy as np


def rober_f(u, p, xp=np):
    k1, k2, k3 = xp.exp(p[0]), xp.exp(p[1]), xp.exp(p[2])
    y1, y2, y3 = u[0], u[1], u[2]
    r1, r2, r3 = k1 * y1, k2 * y2 * y2, k3 * y2 * y3
    return [-r1 + r3, r1 - r2 - r3, r2]


def rober_jac(u, p):
    k1, k2, k3 = np.exp(p)
    y1, y2, y3 = u
    return np.array([[-k1, k3 * y3, k3 * y2],
                     [k1, -2 * k2 * y2 - k3 * y3, -k3 * y2],
                     [0.0, 2 * k2 * y2, 0.0]])


def rober_jac_p(u, p):  # d f / d log k
    k1, k2, k3 = np.exp(p)
    y1, y2, y3 = u
    r1, r2, r3 = k1 * y1, k2 * y2 * y2, k3 * y2 * y3
    return np.array([[-r1, 0.0, r3], [r1, -r2, -r3], [0.0, r2, 0.0]])


def rober_groups_f(u, p, xp=np):
    """Robertson on ``ngroups = len(u) // 3`` uncoupled groups (group-major), rates ``exp(p)`` shared."""
    if xp is not np:  # symbolic (CasADi): the single-group formulas, group by group
        out = []
        for g in range(u.shape[0] // 3):
            out += rober_f(u[3 * g:3 * g + 3], p, xp=xp)
        return out
    k1, k2, k3 = np.exp(p)
    y = np.reshape(u, (-1, 3))
    r1, r2, r3 = k1 * y[:, 0], k2 * y[:, 1] ** 2, k3 * y[:, 1] * y[:, 2]
    return np.stack([-r1 + r3, r1 - r2 - r3, r2], axis=1).ravel()


def rober_groups_jac(u, p):
    """Block diagonal, one ``rober_jac`` block per group, as a CSC matrix."""
    from scipy import sparse

    k1, k2, k3 = np.exp(p)
    y = np.reshape(u, (-1, 3))
    ng = y.shape[0]
    y2, y3 = y[:, 1], y[:, 2]
    blocks = np.zeros((ng, 3, 3))
    blocks[:, 0, 0], blocks[:, 0, 1], blocks[:, 0, 2] = -k1, k3 * y3, k3 * y2
    blocks[:, 1, 0], blocks[:, 1, 1], blocks[:, 1, 2] = k1, -2 * k2 * y2 - k3 * y3, -k3 * y2
    blocks[:, 2, 1] = 2 * k2 * y2
    return sparse.bsr_matrix((blocks, np.arange(ng), np.arange(ng + 1)), shape=(3 * ng, 3 * ng)).tocsc()


def rober_groups_jac_p(u, p):  # d f / d log k, [3 ngroups, 3]
    k1, k2, k3 = np.exp(p)
    y = np.reshape(u, (-1, 3))
    r1, r2, r3 = k1 * y[:, 0], k2 * y[:, 1] ** 2, k3 * y[:, 1] * y[:, 2]
    jp = np.zeros((y.shape[0], 3, 3))
    jp[:, 0, 0], jp[:, 0, 2] = -r1, r3
    jp[:, 1, 0], jp[:, 1, 1], jp[:, 1, 2] = r1, -r2, -r3
    jp[:, 2, 1] = r2
    return jp.reshape(-1, 3)


def vdp_f(u, p, xp=np):
    mu = p[0]
    return [u[1], mu * (1 - u[0] * u[0]) * u[1] - u[0]]


def vdp_jac(u, p):
    mu = p[0]
    return np.array([[0.0, 1.0], [-2 * mu * u[0] * u[1] - 1.0, mu * (1 - u[0] ** 2)]])


def vdp_jac_p(u, p):
    return np.array([[0.0], [(1 - u[0] ** 2) * u[1]]])


def hires_f(y, k, xp=np):
    k1, k2, k3, k4, k5, k6, k7, k8, k9, k10, k11, k12 = (k[i] for i in range(12))
    r = k10 * y[5] * y[7]
    return [
        -k1 * y[0] + k2 * y[1] + k3 * y[2] + k4,
        k1 * y[0] - k5 * y[1],
        -k6 * y[2] + k2 * y[3] + k7 * y[4],
        k3 * y[1] + k1 * y[2] - k8 * y[3],
        -k9 * y[4] + k2 * y[5] + k2 * y[6],
        -r + k11 * y[3] + k1 * y[4] - k2 * y[5] + k11 * y[6],
        r - k12 * y[6],
        -r + k12 * y[6],
    ]


def hires_jac(y, k):
    k1, k2, k3, k4, k5, k6, k7, k8, k9, k10, k11, k12 = k
    j = np.zeros((8, 8))
    j[0, 0], j[0, 1], j[0, 2] = -k1, k2, k3
    j[1, 0], j[1, 1] = k1, -k5
    j[2, 2], j[2, 3], j[2, 4] = -k6, k2, k7
    j[3, 1], j[3, 2], j[3, 3] = k3, k1, -k8
    j[4, 4], j[4, 5], j[4, 6] = -k9, k2, k2
    j[5, 3], j[5, 4], j[5, 5], j[5, 6], j[5, 7] = k11, k1, -k2 - k10 * y[7], k11, -k10 * y[5]
    j[6, 5], j[6, 6], j[6, 7] = k10 * y[7], -k12, k10 * y[5]
    j[7, 5], j[7, 6], j[7, 7] = -k10 * y[7], k12, -k10 * y[5]
    return j


def hires_jac_p(y, k):
    jp = np.zeros((8, 12))
    r_k10 = y[5] * y[7]
    jp[0, 0], jp[0, 1], jp[0, 2], jp[0, 3] = -y[0], y[1], y[2], 1.0
    jp[1, 0], jp[1, 4] = y[0], -y[1]
    jp[2, 5], jp[2, 1], jp[2, 6] = -y[2], y[3], y[4]
    jp[3, 2], jp[3, 0], jp[3, 7] = y[1], y[2], -y[3]
    jp[4, 8], jp[4, 1] = -y[4], y[5] + y[6]
    jp[5, 9], jp[5, 10], jp[5, 0], jp[5, 1] = -r_k10, y[3] + y[6], y[4], -y[5]
    jp[6, 9], jp[6, 11] = r_k10, -y[6]
    jp[7, 9], jp[7, 11] = -r_k10, y[6]
    return jp


PROBLEMS = {
    # name: (f, jac, jac_p, data prefix)
    "robertson": (rober_f, rober_jac, rober_jac_p, "rober"),
    "robertson_ngroups10": (rober_groups_f, rober_groups_jac, rober_groups_jac_p, "rober10"),
    "robertson_ngroups100": (rober_groups_f, rober_groups_jac, rober_groups_jac_p, "rober100"),
    "van_der_pol_mu1000": (vdp_f, vdp_jac, vdp_jac_p, "vdp"),
    "hires": (hires_f, hires_jac, hires_jac_p, "hires"),
}


def unpack(data, name):
    """u0, p, (t0, t1, rtol, atol) of a stiff workload from the shared ``.npz``."""
    pre = PROBLEMS[name][3]
    cfg = data[f"{pre}_cfg"]
    return (np.asarray(data[f"{pre}_u0"], np.float64), np.atleast_1d(np.asarray(data[f"{pre}_p"], np.float64)),
            tuple(float(x) for x in cfg[:4]))

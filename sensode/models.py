"""Named test problems with default parameters.

Each function returns an `ODEProblem` (``reaction_diffusion_steady_state`` a
`NonlinearProblem`); tests, benchmarks, examples and the command line all draw
from here. Every problem takes ``dtype`` (default
float64, the neural ODE float32) and keyword overrides of its defaults.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .problems import NonlinearProblem, ODEProblem

__all__ = [
    "exponential_decay",
    "linear",
    "lotka_volterra",
    "van_der_pol",
    "lorenz",
    "brusselator_1d",
    "neural_ode_mlp",
    "reaction_diffusion_steady_state",
    "PROBLEMS",
]


def _t(x, dtype):
    return tf.constant(np.asarray(x, dtype=np.float64), dtype)


def exponential_decay(k=0.5, u0=(1.0,), tspan=(0.0, 2.0), dtype=tf.float64) -> ODEProblem:
    """``u' = -k u``; exact solution ``u(t) = u0 exp(-k (t - t0))``.

    ``p`` is the scalar ``k``; ``u0`` has shape ``[len(u0)]``.
    """

    def f(t, u, p):
        return -p * u

    return ODEProblem(f, _t(u0, dtype), tspan, _t(k, dtype))


def linear(A=None, n=3, u0=None, tspan=(0.0, 1.0), seed=0, dtype=tf.float64) -> ODEProblem:
    """``u' = A u``; exact solution ``u(t) = expm(A (t - t0)) u0``.

    ``p`` is the ``[n, n]`` matrix ``A`` (default: a random, mildly stable
    matrix from ``seed``); ``u0`` ``[n]`` (default ones). A batch of states
    ``[B, n]`` also works: ``f`` acts on the last axis.
    """
    rng = np.random.default_rng(seed)
    if A is None:
        A = rng.normal(size=(n, n)) / np.sqrt(n) - 0.5 * np.eye(n)
    A = np.asarray(A, dtype=np.float64)
    n = A.shape[0]
    if u0 is None:
        u0 = np.ones(n)

    def f(t, u, p):
        return tf.linalg.matvec(p, u)

    return ODEProblem(f, _t(u0, dtype), tspan, _t(A, dtype))


def lotka_volterra(p=(1.5, 1.0, 3.0, 1.0), u0=(1.0, 1.0), tspan=(0.0, 10.0), dtype=tf.float64) -> ODEProblem:
    """Predator--prey: ``x' = a x - b x y``, ``y' = -c y + d x y``.

    ``p = [a, b, c, d]`` (default ``[1.5, 1, 3, 1]``, the DifferentialEquations.jl
    example), ``u0 = [x, y]`` (shape ``[2]`` or batched ``[B, 2]``).
    """

    def f(t, u, p):
        x, y = u[..., 0], u[..., 1]
        return tf.stack([p[0] * x - p[1] * x * y, -p[2] * y + p[3] * x * y], axis=-1)

    return ODEProblem(f, _t(u0, dtype), tspan, _t(p, dtype))


def van_der_pol(mu=1.0, u0=(2.0, 0.0), tspan=(0.0, 6.3), dtype=tf.float64) -> ODEProblem:
    """``x'' - mu (1 - x^2) x' + x = 0`` as a first-order system; ``p = mu``.

    Non-stiff for ``mu`` of order one, increasingly stiff for large ``mu``.
    """

    def f(t, u, p):
        x, v = u[..., 0], u[..., 1]
        return tf.stack([v, p * (1.0 - x * x) * v - x], axis=-1)

    return ODEProblem(f, _t(u0, dtype), tspan, _t(mu, dtype))


def lorenz(sigma=10.0, rho=28.0, beta=8.0 / 3.0, u0=(1.0, 0.0, 0.0), tspan=(0.0, 1.0), dtype=tf.float64) -> ODEProblem:
    """The Lorenz system, chaotic for the default ``p = [sigma, rho, beta]``.

    The textbook case where backsolve adjoints fail over long spans.
    """

    def f(t, u, p):
        x, y, z = u[..., 0], u[..., 1], u[..., 2]
        return tf.stack([p[0] * (y - x), x * (p[1] - z) - y, x * y - p[2] * z], axis=-1)

    return ODEProblem(f, _t(u0, dtype), tspan, _t([sigma, rho, beta], dtype))


def brusselator_1d(n=32, A=1.0, B=3.0, alpha=0.02, tspan=(0.0, 10.0), dtype=tf.float64) -> ODEProblem:
    """The 1-D Brusselator reaction--diffusion system (Hairer & Wanner II, IV.10).

    State ``[2, n]`` (``u`` and ``v`` on ``n`` interior grid points, Dirichlet
    boundaries ``u = 1``, ``v = 3``), ``u(0, x) = 1 + sin(2 pi x)``,
    ``v(0, x) = 3``; ``p = [A, B, alpha]``. Stiffness grows like
    ``alpha (n + 1)^2``: for large ``n`` an explicit method needs small steps.
    """
    x = np.arange(1, n + 1) / (n + 1)
    u0 = np.stack([1.0 + np.sin(2 * np.pi * x), np.full(n, 3.0)])
    h2 = float((n + 1) ** 2)

    def f(t, u, p):
        a, b, alpha = p[0], p[1], p[2]
        uu, vv = u[0], u[1]
        one = tf.ones_like(uu[:1])
        upad = tf.concat([one, uu, one], 0)
        vpad = tf.concat([3.0 * one, vv, 3.0 * one], 0)
        lap_u = upad[:-2] - 2.0 * uu + upad[2:]
        lap_v = vpad[:-2] - 2.0 * vv + vpad[2:]
        u2v = uu * uu * vv
        du = a + u2v - (b + 1.0) * uu + alpha * h2 * lap_u
        dv = b * uu - u2v + alpha * h2 * lap_v
        return tf.stack([du, dv])

    return ODEProblem(f, _t(u0, dtype), tspan, _t([A, B, alpha], dtype))


def neural_ode_mlp(dim=2, hidden=64, depth=2, batch=512, tspan=(0.0, 1.0), seed=0, dtype=tf.float32) -> ODEProblem:
    """A neural ODE ``u' = MLP(u)``: ``dim -> hidden (x depth) -> dim``, tanh.

    ``p`` is a dict ``{"w0", "b0", ..., "w{depth}", "b{depth}"}`` of Glorot-
    initialised weights (about 4,500 parameters for the defaults 2->64->64->2);
    ``u0`` is ``[batch, dim]`` drawn from a standard normal.
    """
    rng = np.random.default_rng(seed)
    sizes = [dim] + [hidden] * depth + [dim]
    p = {}
    for i, (m, k) in enumerate(zip(sizes[:-1], sizes[1:])):
        lim = np.sqrt(6.0 / (m + k))
        p[f"w{i}"] = _t(rng.uniform(-lim, lim, size=(m, k)), dtype)
        p[f"b{i}"] = _t(np.zeros(k), dtype)
    u0 = _t(rng.normal(size=(batch, dim)), dtype)
    n_layers = len(sizes) - 1

    def f(t, u, p):
        h = u
        for i in range(n_layers):
            h = tf.matmul(h, p[f"w{i}"]) + p[f"b{i}"]
            if i < n_layers - 1:
                h = tf.tanh(h)
        return h

    return ODEProblem(f, u0, tspan, p)


def reaction_diffusion_steady_state(n=1000, D=1e-4, k=10.0, amplitude=50.0, dtype=tf.float64) -> NonlinearProblem:
    """The steady state ``-D u'' + k u + u^3 = s(x)`` on ``(0, 1)``, ``u = 0`` at the ends.

    A `NonlinearProblem` with ``n`` interior unknowns (second differences),
    ``s(x) = amplitude sin(pi x)``, ``p = {"D", "k", "s"}`` and the initial
    guess ``u0 = 0``. Its Jacobian is symmetric positive definite and
    tridiagonal: the test case for matrix-free linear solvers at large ``n``.
    """
    h = 1.0 / (n + 1)
    x = np.linspace(h, 1 - h, n)

    def f(u, p):
        padded = tf.pad(u, [[1, 1]])
        lap = (padded[:-2] - 2.0 * u + padded[2:]) / h**2
        return -p["D"] * lap + p["k"] * u + u**3 - p["s"]

    p = {"D": _t(D, dtype), "k": _t(k, dtype), "s": _t(amplitude * np.sin(np.pi * x), dtype)}
    return NonlinearProblem(f, tf.zeros([n], dtype), p)


# ODE problems by name (the command line and the comparison tool draw from here).
PROBLEMS = {
    "exponential_decay": exponential_decay,
    "linear": linear,
    "lotka_volterra": lotka_volterra,
    "van_der_pol": van_der_pol,
    "lorenz": lorenz,
    "brusselator_1d": brusselator_1d,
    "neural_ode_mlp": neural_ode_mlp,
}

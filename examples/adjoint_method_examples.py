"""The two worked examples of the adjoint method, solved and differentiated by sensode.

Example 1: u = [p1^2 + p2, p1 p2], g = u1 + u2^2 (written as the residual
           f(u, p) = u - [p1^2 + p2, p1 p2] = 0).
Example 2: f1 = u1 + u2 + p1 = 0, f2 = u1^3 - u2 + p2 = 0, g = u1^2 + u2^2.

Each example is solved with Newton--Raphson and differentiated with every
sensitivity mode (the implicit adjoint with a dense and a matrix-free linear
solver, and forward sensitivities); the gradients are printed next to the
hand-derived ones.

Usage:
  python examples/adjoint_method_examples.py --p1=1.0 --p2=2.0 --dtype=float64
"""

from absl import app, flags
import numpy as np
import tensorflow as tf

import sensode as so

DTYPE = flags.DEFINE_string("dtype", "float64", "float32 or float64")
P1 = flags.DEFINE_float("p1", 1.0, "first parameter")
P2 = flags.DEFINE_float("p2", 2.0, "second parameter")


def example1(u, p):
    return u - tf.stack([p[0] ** 2 + p[1], p[0] * p[1]])


def loss1(u):
    return u[0] + u[1] ** 2


def exact1(p1, p2):
    """By hand: u = [p1^2 + p2, p1 p2] so dg/dp = [1 + 0, 2 u2] . du/dp."""
    u2 = p1 * p2
    return np.array([2 * p1 + 2 * u2 * p2, 1 + 2 * u2 * p1])


def example2(u, p):
    return tf.stack([u[0] + u[1] + p[0], u[0] ** 3 - u[1] + p[1]])


def loss2(u):
    return u[0] ** 2 + u[1] ** 2


def exact2(p1, p2):
    """By hand with the implicit function theorem.

    Eliminating u2 = u1^3 + p2 gives u1^3 + u1 + (p1 + p2) = 0, one real root
    (Cardano). df/du = [[1, 1], [3 u1^2, -1]], df/dp = I, so
    du/dp = -(df/du)^-1 = [[-1, -1], [-3 u1^2, 1]] / (1 + 3 u1^2) and
    dg/dp = 2 u1 du1/dp + 2 u2 du2/dp.
    """
    s = p1 + p2
    q = np.sqrt(s**2 / 4 + 1 / 27)
    u1 = np.cbrt(-s / 2 + q) + np.cbrt(-s / 2 - q)
    u2 = u1**3 + p2
    d = 1 + 3 * u1**2
    return np.array([(-2 * u1 - 6 * u1**2 * u2) / d, (-2 * u1 + 2 * u2) / d])


MODES = {
    "DiscreteAdjoint(LU)": so.DiscreteAdjoint(),
    "SteadyStateAdjoint(GMRES)": so.SteadyStateAdjoint(linsolve=so.linsolve.GMRES()),
    "ForwardSensitivity": so.ForwardSensitivity(),
}


def report(name, residual, loss, exact, p1, p2, dtype):
    print(f"\n{name}")
    expected = exact(p1, p2)
    print(f"  {'hand-derived':28s} dg/dp = {expected}")
    for label, sensealg in MODES.items():
        p = tf.constant([p1, p2], dtype)
        with tf.GradientTape() as tape:
            tape.watch(p)
            sol = so.solve(so.NonlinearProblem(residual, tf.zeros(2, dtype), p), so.NewtonRaphson(), sensealg=sensealg)
            g = loss(sol.u)
        grad = tape.gradient(g, p).numpy()
        err = np.max(np.abs(grad - expected) / np.maximum(np.abs(expected), 1e-30))
        print(f"  {label:28s} dg/dp = {grad}  (rel. error {err:.1e}, u = {sol.u.numpy()}, {int(sol.iterations)} iterations)")
        if sol.du_dp is not None:
            print(f"  {'':28s} du/dp = {sol.du_dp.numpy().tolist()}")


def main(argv):
    del argv
    dtype = {"float32": tf.float32, "float64": tf.float64}[DTYPE.value]
    p1, p2 = P1.value, P2.value
    report("Example 1: u = [p1^2 + p2, p1 p2], g = u1 + u2^2", example1, loss1, exact1, p1, p2, dtype)
    report("Example 2: u1 + u2 + p1 = 0, u1^3 - u2 + p2 = 0, g = u1^2 + u2^2", example2, loss2, exact2, p1, p2, dtype)


if __name__ == "__main__":
    app.run(main)

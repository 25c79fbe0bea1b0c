"""References and shared set-ups for the stiff tests (`test_stiff*.py`).

Written independently of `sensode.models`: NumPy right-hand sides for SciPy
``solve_ivp(method="Radau")`` at rtol 1e-11 (with the forward sensitivity
equations alongside for gradients), the linear system with eigenvalues from
-1 to -1e6 checked against ``expm`` / ``expm_frechet``, and Robertson's
analytic Jacobian. Each reference is computed once, at import.
"""

import numpy as np
import scipy.linalg
import tensorflow as tf
from scipy.integrate import solve_ivp

import sensode as sd
from sensode import models


def _rober_np(t, u, k=(0.04, 3e7, 1e4)):
    r1, r2, r3 = k[0] * u[0], k[1] * u[1] ** 2, k[2] * u[1] * u[2]
    return np.array([-r1 + r3, r1 - r2 - r3, r2])


def _vdp_np(t, u, mu=1000.0):
    return np.array([u[1], mu * (1.0 - u[0] ** 2) * u[1] - u[0]])


def _radau(f, u0, t1, ts, rtol=1e-11, atol=1e-14):
    """SciPy Radau on a NumPy right-hand side (written independently of sensode.models)."""
    res = solve_ivp(f, (0.0, t1), u0, method="Radau", rtol=rtol, atol=atol, t_eval=ts)
    assert res.success
    return res.y.T


# ----------------------------------------------------------------- the linear stiff system

_RNG = np.random.default_rng(3)
_Q = np.linalg.qr(_RNG.normal(size=(4, 4)))[0]
A_STIFF = _Q @ np.diag([-1.0, -1e2, -1e4, -1e6]) @ _Q.T
U0_LIN = np.array([1.0, 0.5, -0.3, 0.2])


def _linear_loss(method, a, u0, sensealg=None):
    prob = sd.ODEProblem(lambda t, u, p: tf.linalg.matvec(p, u), u0, (0.0, 1.0), a)
    sol = sd.solve(prob, method, saveat=tf.constant([0.5, 1.0], tf.float64), rtol=1e-9, atol=1e-12,
                   sensealg=sensealg, max_steps=5000)
    return tf.reduce_sum(sol.u[-1] * tf.constant([1.0, -2.0, 0.5, 3.0], tf.float64)), sol.u


def assert_linear_against_expm(u, ga, gu0):
    """``_linear_loss``'s saves and gradients against ``expm`` / ``expm_frechet``."""
    w = np.array([1.0, -2.0, 0.5, 3.0])
    np.testing.assert_allclose(u.numpy()[0], scipy.linalg.expm(0.5 * A_STIFF) @ U0_LIN, atol=1e-8)
    np.testing.assert_allclose(u.numpy()[1], scipy.linalg.expm(A_STIFF) @ U0_LIN, atol=1e-8)
    # Gradients to 5e-7 (about 2e-6 relative): the discrete adjoint is the exact gradient of the computed
    # solution, whose error at rtol 1e-9 was 1.4e-7 on the machine of 2 December (Kvaerno5, du0) and under
    # 1e-7 on earlier ones. A wrong adjoint is off by orders of magnitude more.
    np.testing.assert_allclose(gu0.numpy(), scipy.linalg.expm(A_STIFF).T @ w, atol=5e-7)
    # dL/dA_ij = w^T L(A, E_ij) u0 with L the Frechet derivative of expm.
    want = np.array([[w @ scipy.linalg.expm_frechet(A_STIFF, np.outer(np.eye(4)[i], np.eye(4)[j]),
                                                    compute_expm=False) @ U0_LIN for j in range(4)]
                     for i in range(4)])
    np.testing.assert_allclose(ga.numpy(), want, atol=5e-7)


# ----------------------------------------------------------------- sensitivities on Robertson


def _rober_sens_reference(t1, ts, u0=(1.0, 0.0, 0.0), with_state=False):
    """d u / d log k ``[T, 3, 3]`` at ``ts`` from SciPy Radau on the state plus forward sensitivity equations.

    With ``with_state``: ``(u [T, 3], d u / d log k)``.
    """
    k = np.array([0.04, 3e7, 1e4])

    def rhs(t, z):
        y, s = z[:3], z[3:].reshape(3, 3)
        y1, y2, y3 = y
        f = np.array([-k[0] * y1 + k[2] * y2 * y3, k[0] * y1 - k[1] * y2**2 - k[2] * y2 * y3, k[1] * y2**2])
        jac = np.array([[-k[0], k[2] * y3, k[2] * y2],
                        [k[0], -2 * k[1] * y2 - k[2] * y3, -k[2] * y2],
                        [0.0, 2 * k[1] * y2, 0.0]])
        dfdk = np.array([[-y1, 0.0, y2 * y3], [y1, -y2**2, -y2 * y3], [0.0, y2**2, 0.0]])
        return np.concatenate([f, (jac @ s + dfdk * k[None, :]).ravel()])

    z0 = np.concatenate([np.asarray(u0, np.float64), np.zeros(9)])
    res = solve_ivp(rhs, (0.0, t1), z0, method="Radau", rtol=1e-11, atol=1e-14, t_eval=ts)
    sens = res.y.T[:, 3:].reshape(-1, 3, 3)
    return (res.y.T[:, :3], sens) if with_state else sens


SENS_TS = np.array([1.0, 10.0, 100.0])
SENS_W = np.array([1.0, 1e4, 1.0])  # y2 is ~1e-5: weight it so all three species matter
SENS_REF = np.einsum("tij,i->j", _rober_sens_reference(100.0, SENS_TS), SENS_W)
ROBER_LOG = models.robertson(log_rates=True, tspan=(0.0, 100.0))


def _sens_grad(method, sensealg, prob=ROBER_LOG, ts=SENS_TS, rtol=1e-9, atol=1e-13, eager=False, jit_compile=False):
    def run(q):
        with tf.GradientTape() as tape:
            tape.watch(q)
            sol = sd.solve(prob.remake(p=q), method, saveat=tf.constant(ts), rtol=rtol, atol=atol,
                           sensealg=sensealg, throw=False, max_steps=5000)
            loss = tf.reduce_sum(sol.u * tf.constant(SENS_W))
        return tape.gradient(loss, q)

    # Eagerly, `solve` runs its own compiled program and the tape differentiates it.
    return (run if eager else tf.function(run, jit_compile=jit_compile))(ROBER_LOG.p).numpy()


# ----------------------------------------------------------------- a user-supplied Jacobian


def _rober_jac(log_rates=False, calls=None):
    """Robertson's analytic df/du, written here (not in sensode.models); ``[..., 3, 3]`` for ``u`` ``[..., 3]``."""

    def jac(t, u, p):
        if calls is not None:
            calls.append(u.shape)
        k = tf.exp(p) if log_rates else p
        y1, y2, y3 = u[..., 0], u[..., 1], u[..., 2]
        z = tf.zeros_like(y1)
        rows = [[-k[0] + z, k[2] * y3, k[2] * y2],
                [k[0] + z, -2.0 * k[1] * y2 - k[2] * y3, -k[2] * y2],
                [z, 2.0 * k[1] * y2, z]]
        return tf.stack([tf.stack(r, axis=-1) for r in rows], axis=-2)

    return jac


def _rober_flat(t, y, k=(0.04, 3e7, 1e4)):
    return [models.robertson().f(t, y[0], tf.constant(k, tf.float64))]

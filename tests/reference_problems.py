"""Problems with independent reference answers, shared by the solver tests.

References never come from sensode itself: closed forms, `scipy.linalg.expm`,
or `scipy.integrate.solve_ivp` (DOP853 at rtol = atol = 1e-12), each computed
once per session (``functools.lru_cache``).
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.integrate
import scipy.linalg
import tensorflow as tf

import sensode as sd

ALL_METHODS = [sd.Euler, sd.Midpoint, sd.Heun, sd.RK4, sd.BS3, sd.DP5, sd.Tsit5, sd.DP8]
FIXED_METHODS = [m for m in ALL_METHODS if not m().adaptive]
ADAPTIVE_METHODS = [m for m in ALL_METHODS if m().adaptive]

# --- exponential decay: u' = -k u ------------------------------------------------
DECAY_K = 0.7
DECAY_U0 = np.array([1.0, -2.0])


def decay_exact(t, t0=0.0, k=DECAY_K, u0=DECAY_U0):
    """``u(t) = u0 exp(-k (t - t0))`` at the times ``t`` (``[T, len(u0)]``)."""
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    return np.exp(-k * (t - t0))[:, None] * np.asarray(u0)[None, :]


def decay_problem(tspan=(0.0, 2.0), dtype=tf.float64, u0=DECAY_U0, k=DECAY_K):
    def f(t, u, p):
        return -p * u

    return sd.ODEProblem(f, tf.constant(u0, dtype), tspan, tf.constant(k, dtype))


# --- linear system: u' = A u -----------------------------------------------------
# A rotation with mild decay plus a coupled third mode: complex and real
# eigenvalues, no special structure the solver could exploit.
LINEAR_A = np.array(
    [
        [-0.3, 1.2, 0.0],
        [-1.0, -0.2, 0.4],
        [0.3, 0.0, -0.6],
    ]
)
LINEAR_U0 = np.array([1.0, 0.5, -0.8])


def linear_exact(t, t0=0.0, A=LINEAR_A, u0=LINEAR_U0):
    """``u(t) = expm(A (t - t0)) u0`` at the times ``t`` (``[T, n]``)."""
    t = np.atleast_1d(np.asarray(t, dtype=np.float64))
    return np.stack([scipy.linalg.expm(A * (ti - t0)) @ u0 for ti in t])


def linear_rhs(t, u, p):
    return tf.linalg.matvec(p, u)


def linear_problem(tspan=(0.0, 2.0), dtype=tf.float64, A=LINEAR_A, u0=LINEAR_U0):
    return sd.ODEProblem(linear_rhs, tf.constant(u0, dtype), tspan, tf.constant(A, dtype))


# --- Lotka--Volterra -------------------------------------------------------------
LV_P = (1.5, 1.0, 3.0, 1.0)
LV_U0 = (1.0, 1.0)
LV_TSPAN = (0.0, 10.0)


def lv_rhs_numpy(t, u, a, b, c, d):
    x, y = u
    return [a * x - b * x * y, -c * y + d * x * y]


@functools.lru_cache(maxsize=None)
def lotka_volterra_reference(times: tuple, u0: tuple = LV_U0, p: tuple = LV_P, t0: float = LV_TSPAN[0]):
    """SciPy DOP853 at rtol = atol = 1e-12, evaluated at ``times`` (``[T, 2]``)."""
    times = np.asarray(times, dtype=np.float64)
    t1 = times[-1] if abs(times[-1] - t0) > abs(times[0] - t0) else times[0]
    res = scipy.integrate.solve_ivp(
        lv_rhs_numpy, (t0, t1), list(u0), method="DOP853", rtol=1e-12, atol=1e-12, args=p, t_eval=times
    )
    assert res.success, res.message
    return res.y.T.copy()


def lotka_volterra_p_sensitivities(times, u0=LV_U0, p=LV_P, t0: float = 0.0):
    """States ``[T, 2]`` and ``du/dp`` ``[T, 2, 4]`` at increasing ``times``.

    SciPy DOP853 (rtol = atol = 1e-12) on the state together with the forward
    sensitivity equations ``S' = J S + df/dp``, with the Jacobians written by
    hand: independent of sensode.
    """
    a, b, c, d = p
    times = np.asarray(times, dtype=np.float64)

    def rhs(t, z):
        x, y = z[:2]
        S = z[2:].reshape(2, 4)
        J = np.array([[a - b * y, -b * x], [d * y, -c + d * x]])
        Fp = np.array([[x, -x * y, 0.0, 0.0], [0.0, 0.0, -y, x * y]])
        return np.concatenate([[a * x - b * x * y, -c * y + d * x * y], (J @ S + Fp).ravel()])

    res = scipy.integrate.solve_ivp(
        rhs, (t0, times[-1]), np.concatenate([u0, np.zeros(8)]), method="DOP853", t_eval=times, rtol=1e-12, atol=1e-12
    )
    assert res.success, res.message
    return res.y[:2].T, res.y[2:].T.reshape(-1, 2, 4)


@functools.lru_cache(maxsize=None)
def scipy_rk45_nfev(rtol: float, atol: float, u0: tuple = LV_U0, p: tuple = LV_P, tspan: tuple = LV_TSPAN) -> int:
    """Function evaluations of SciPy's RK45 (the Dormand--Prince 5(4) pair) on Lotka--Volterra."""
    res = scipy.integrate.solve_ivp(lv_rhs_numpy, tspan, list(u0), method="RK45", rtol=rtol, atol=atol, args=p)
    assert res.success, res.message
    return int(res.nfev)


def lv_problem(dtype=tf.float64, u0=LV_U0, p=LV_P, tspan=LV_TSPAN):
    return sd.models.lotka_volterra(p=p, u0=u0, tspan=tspan, dtype=dtype)


# --- sensitivity algorithms ------------------------------------------------------
# Name -> algorithm. "default" is sensealg=None (the gradient comes from
# `default_sensealg`'s choice, computed on demand).
SENSEALGS = {
    "forward": sd.ForwardSensitivity(),
    "discrete": sd.DiscreteAdjoint(),
    "discrete_ckpt": sd.DiscreteAdjoint(checkpoints=2),
    "backsolve": sd.BacksolveAdjoint(),
    "interpolating": sd.InterpolatingAdjoint(),
    "interpolating_ckpt": sd.InterpolatingAdjoint(checkpoints=2),
    "quadrature": sd.QuadratureAdjoint(),
    "default": None,
}


# --- execution modes -------------------------------------------------------------
EXECUTION_MODES = ("eager", "function", "xla")


def in_mode(mode: str, fn):
    """``fn`` run eagerly, in ``tf.function``, or in ``tf.function(jit_compile=True)``."""
    if mode == "eager":
        return fn
    if mode == "function":
        return tf.function(fn)
    if mode == "xla":
        return tf.function(fn, jit_compile=True)
    raise ValueError(f"unknown execution mode {mode!r}")


# Exponential decay u' = -k u shared by the sensitivity tests.
DECAY_K = 0.7
DECAY_U0 = np.array([1.0, -2.0])
DECAY_W = np.array([0.3, 0.5])  # weight on u(t1)


class Measured(dict):
    """Relative errors by (test, algorithm), printed as they are recorded (``pytest -s`` shows them)."""

    def __setitem__(self, key, errs):
        super().__setitem__(key, errs)
        text = ", ".join(f"{q} {e:.1e}" for q, e in errs.items()) if isinstance(errs, dict) else f"{errs:.1e}"
        print(f"\nmeasured {'/'.join(key)}: {text}")


def rel_err(x, ref):
    """``max |x - ref| / max |ref|`` (a relative error of the whole array)."""
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    return float(np.max(np.abs(x - ref)) / np.max(np.abs(ref)))


def assert_close(name, x, ref, tol):
    assert x is not None, f"{name}: gradient is None"
    err = rel_err(np.asarray(x), ref)
    assert err < tol, f"{name}: relative error {err:.3e} >= {tol:.0e}"
    return err

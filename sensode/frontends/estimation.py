"""Parameter estimation: fit an `ODEProblem`'s parameters (and initial state) to observations.

`fit` minimises a least-squares (or user) loss of the solution at the
observation times with Keras Adam and / or TFP's L-BFGS, differentiating the
solve with any sensitivity algorithm, and returns a `FitResult` with the
estimate, the loss history and Gauss--Newton standard errors.

Conventions:

* θ is the flat float64 vector of what is fitted: ``u0`` (if ``fit_u0``, first)
  then every floating leaf of ``p`` in `tf.nest` order. The optimisers see
  ``z`` with ``θ_i = exp(z_i)`` for positive entries and ``θ_i = z_i`` else.
* A trial θ at which the solve fails (``status != 0``: step limit, step size
  underflow, non-finite states) or the loss / gradient is not finite gets loss
  ``+inf`` and gradient zero: L-BFGS's line search then shrinks its step; Adam
  skips the update.
* Standard errors (least squares only): ``Cov = s^2 (J^T J)^{-1}`` with ``J``
  the ``[n_obs, len(θ)]`` Jacobian of the observed predictions from
  `sensode.forward_sensitivities` at the estimate and
  ``s^2 = RSS / (n_obs - len(θ))``. They are first-order (asymptotic) and
  assume independent errors of equal variance.

References: Bates & Watts, "Nonlinear Regression Analysis and Its
Applications", Wiley 1988, ch. 2; Nocedal & Wright, "Numerical Optimization",
2nd ed., ch. 7 (L-BFGS); Kingma & Ba, "Adam", ICLR 2015.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from ..params import is_differentiable
from ..params import leaves as p_leaves
from ..problems import ODEProblem
from ..api import forward_sensitivities, solve
from ..ode.methods import Tsit5

__all__ = ["fit", "FitResult", "Objective"]


@dataclasses.dataclass
class FitResult:
    """The result of `fit`.

    Attributes:
      p: the estimated parameters, a nest like ``prob.p`` (float tensors in ``prob.p``'s dtype).
      u0: the estimated initial state (``prob.u0`` if ``fit_u0=False``).
      theta: ``[n]`` float64 numpy array of the fitted values (θ, see the module docstring).
      names: ``[n]`` labels of θ, e.g. ``"p[2]"``, ``"u0[0]"``, ``"p.w0[3]"``.
      loss: the final loss.
      loss_history: loss of every evaluation in order (Adam: one per step; L-BFGS: one per
        function evaluation, line-search trials included; ``inf`` for failed trials).
      standard_errors: ``[n]`` float64 array (least squares only, else None).
      covariance: ``[n, n]`` float64 array (least squares only, else None).
      sigma2: residual variance ``RSS / (n_obs - n)`` (least squares only).
      n_obs: number of (unmasked) observations.
      failed_trials: evaluations whose solve failed or gave non-finite values.
      converged: L-BFGS's convergence flag (True after an Adam-only fit that finished).
      problem: ``prob`` with the estimate substituted.
      seconds: wall time of the whole fit (compilation included).
      first_evaluation_seconds: the first loss-and-gradient call (tracing and compilation).
      seconds_per_evaluation: median wall time of the later loss-and-gradient calls.
    """

    p: Any
    u0: tf.Tensor
    theta: np.ndarray
    names: list
    loss: float
    loss_history: list
    standard_errors: np.ndarray | None
    covariance: np.ndarray | None
    sigma2: float | None
    n_obs: int
    failed_trials: int
    converged: bool
    problem: ODEProblem
    seconds: float = 0.0
    first_evaluation_seconds: float = 0.0
    seconds_per_evaluation: float = 0.0

    def summary(self, truth=None) -> str:
        """A table of estimates ± standard errors (and ``truth``, a ``[n]`` array, if given)."""
        lines = [f"loss {self.loss:.6g}, {len(self.loss_history)} evaluations, {self.failed_trials} failed, "
                 f"converged={self.converged}, n_obs={self.n_obs}",
                 f"{self.seconds:.2f} s ({self.first_evaluation_seconds:.2f} s first evaluation, "
                 f"{1e3 * self.seconds_per_evaluation:.2f} ms per later evaluation)"]
        head = f"{'name':>10} {'estimate':>12} {'std.err':>10}" + (f" {'truth':>10} {'z':>6}" if truth is not None else "")
        lines.append(head)
        for i, name in enumerate(self.names):
            se = None if self.standard_errors is None else self.standard_errors[i]
            s = f"{name:>10} {self.theta[i]:12.6g} {('-' if se is None else f'{se:.3g}'):>10}"
            if truth is not None:
                z = (self.theta[i] - truth[i]) / se if se else float("nan")
                s += f" {float(truth[i]):10.6g} {z:6.2f}"
            lines.append(s)
        return "\n".join(lines)


def _leaf_names(p):
    if p is None:
        return []
    if tf.is_tensor(p) or isinstance(p, (np.ndarray, tf.Variable)):
        return ["p"]
    if isinstance(p, dict) and all(not isinstance(v, (dict, list, tuple)) for v in p.values()):
        return [f"p.{k}" for k in sorted(p)]  # tf.nest's order for a flat dict
    return [f"p.{i}" for i in range(len(p_leaves(p)))]


def _per_leaf(positive, p, n_leaves):
    """``positive`` -> one bool (or bool array) per leaf of ``p``."""
    if isinstance(positive, bool):
        return [positive] * n_leaves
    if n_leaves == 1 and not isinstance(p, (dict, list, tuple)):
        return [positive]
    if isinstance(p, dict) and isinstance(positive, dict) and set(p) == set(positive):
        return [positive[k] for k in sorted(p)]
    if isinstance(p, (list, tuple)) and isinstance(positive, (list, tuple)) and len(positive) == n_leaves:
        return list(positive)
    raise ValueError("`positive` must be a bool, a bool array shaped like a tensor `p`, or a dict / list "
                     "like a flat `p` with one bool or bool array per entry")


def _mask_for(flag, shape, what):
    m = np.broadcast_to(np.asarray(flag, dtype=bool), shape) if shape else np.asarray(flag, dtype=bool).reshape(())
    if m.shape != tuple(shape):
        raise ValueError(f"`{what}` must broadcast to {tuple(shape)}, got shape {np.shape(flag)}")
    return m.reshape(-1)


def _observed_shape(prob, observe, n_times) -> tf.TensorShape:
    """Static shape of the model's observed output at ``n_times`` times (traced, not run)."""
    states = tf.TensorShape([n_times] + prob.u0.shape.as_list())
    if observe is None:
        return states
    if not callable(observe):
        raise TypeError(f"`observe` must be callable as observe(u) -> y, got {type(observe).__name__}")
    spec = tf.TensorSpec(states, prob.u0.dtype)
    out = tf.function(observe, autograph=False).get_concrete_function(spec).structured_outputs
    if not tf.is_tensor(out):
        raise TypeError(f"`observe` must return one tensor, got {type(out).__name__}")
    return out.shape


def _check_data_shape(data_shape, expected: tf.TensorShape, observe):
    # Checked before optimising: a [T, 1] data set for a 2-state model would
    # otherwise broadcast against u silently and fit something meaningless.
    if expected.rank == len(data_shape) and expected.is_compatible_with(data_shape):
        return
    what = ("the observed output observe(u)" if observe is not None
            else "the states u at `times` (no `observe`)")
    hint = "" if observe is not None else "; to fit some states only, pass `observe`, e.g. lambda u: u[:, :1]"
    raise ValueError(f"`data` has shape {tuple(data_shape)}, expected {tuple(expected.as_list())}: the shape of "
                     f"{what}{hint}")


class Objective:
    """The fitting loss as a function of the optimiser's coordinates ``z`` (see `fit`).

    ``objective(z)`` returns ``(loss, grad, failed)``: float64 scalar, ``[n]`` gradient, bool.
    `to_z` / `to_theta` map between coordinates, `build(theta)` gives ``(u0, p)``.
    """

    def __init__(self, prob, times, data, *, observe, loss, fit_u0, positive, positive_u0, mask_nan, alg,
                 sensealg, rtol, atol, max_steps, jit_compile):
        self.prob, self.alg, self.observe = prob, alg, observe
        self.solve_kw = dict(rtol=rtol, atol=atol, max_steps=max_steps)
        dtype = prob.u0.dtype
        self.dtype = dtype
        self.times = tf.constant(np.asarray(times, np.float64), dtype)
        if self.times.shape.rank != 1:
            raise ValueError(f"`times` must be 1-D, got shape {self.times.shape}")
        data = np.asarray(data, np.float64)
        if data.shape[:1] != tuple(self.times.shape):
            raise ValueError(f"`data` must have shape [T, ...] with T = len(times) = {self.times.shape[0]}, got {data.shape}")
        _check_data_shape(data.shape, _observed_shape(prob, observe, int(self.times.shape[0])), observe)
        nan = np.isnan(data)
        if np.isinf(data).any():
            raise ValueError("`data` contains +-inf; remove those observations (or set them to NaN with mask_nan=True)")
        if nan.any() and not mask_nan:
            first = tuple(int(i) for i in np.argwhere(nan)[0])
            raise ValueError(f"`data` contains {int(nan.sum())} NaN observation(s) (first at index {first}); "
                             "pass mask_nan=True to ignore them in the loss")
        self.mask = tf.constant((~nan).astype(np.float64), dtype)
        self.data = tf.constant(np.where(nan, 0.0, data), dtype)
        self.n_obs = int((~nan).sum())
        self.user_loss = loss
        # What is fitted: u0 first, then the floating leaves of p.
        leaves = p_leaves(prob.p)
        self.leaves = leaves
        self.float_idx = [i for i, x in enumerate(leaves) if is_differentiable(x)]
        self.fit_u0 = fit_u0
        parts, names, pos = [], [], []
        if fit_u0:
            parts.append(prob.u0)
            names += [f"u0[{j}]" for j in range(int(prob.u0.shape.num_elements()))]
            pos.append(_mask_for(positive_u0, prob.u0.shape.as_list(), "positive_u0"))
        pos_leaves = _per_leaf(positive, prob.p, len(leaves))
        leaf_names = _leaf_names(prob.p)
        for i in self.float_idx:
            parts.append(leaves[i])
            n = int(leaves[i].shape.num_elements())
            names += [f"{leaf_names[i]}[{j}]" for j in range(n)] if leaves[i].shape.rank else [leaf_names[i]]
            pos.append(_mask_for(pos_leaves[i], leaves[i].shape.as_list(), "positive"))
        if not parts:
            raise ValueError("nothing to fit: `p` has no floating leaves and fit_u0=False")
        self.shapes = [x.shape for x in parts]
        self.sizes = [int(x.shape.num_elements()) for x in parts]
        self.names = names
        self.positive = np.concatenate(pos)
        self.theta0 = np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in parts])
        if np.any(self.theta0[self.positive] <= 0):
            raise ValueError(f"initial values of positive parameters must be > 0: "
                             f"{[n for n, v, q in zip(names, self.theta0, self.positive) if q and v <= 0]}")
        self._pos = tf.constant(self.positive)
        self.sensealg = sensealg
        self._fn = tf.function(self._value_and_grad, jit_compile=jit_compile, autograph=False)

    def to_z(self, theta):
        theta = np.asarray(theta, np.float64)
        return np.where(self.positive, np.log(np.where(self.positive, theta, 1.0)), theta)

    def to_theta(self, z):
        return tf.where(self._pos, tf.exp(z), z)

    def build(self, theta):
        """``theta [n] -> (u0, p)`` in the problem's dtype and structure."""
        chunks = [tf.reshape(tf.cast(c, self.dtype), s) for c, s in zip(tf.split(theta, self.sizes), self.shapes)]
        u0 = chunks.pop(0) if self.fit_u0 else self.prob.u0
        new = list(self.leaves)
        for i, c in zip(self.float_idx, chunks):
            new[i] = c
        p = tf.nest.pack_sequence_as(self.prob.p, new) if self.prob.p is not None else None
        return u0, p

    def predict(self, u):
        """Observed quantities from the saved states ``u`` ``[T, *u0.shape]``."""
        return u if self.observe is None else self.observe(u)

    def _loss(self, u):
        y = self.predict(u)
        if self.user_loss is not None:
            return tf.cast(self.user_loss(y, self.data, self.mask), tf.float64)
        r = (y - self.data) * self.mask
        return tf.cast(tf.reduce_sum(r * r), tf.float64) / self.n_obs

    def _value_and_grad(self, z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            u0, p = self.build(self.to_theta(z))
            sol = solve(self.prob.remake(u0=u0, p=p), self.alg, saveat=self.times, sensealg=self.sensealg,
                        throw=False, **self.solve_kw)
            value = self._loss(sol.u)
        grad = tape.gradient(value, z, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        failed = tf.logical_or(tf.not_equal(sol.status, 0), tf.logical_not(tf.math.is_finite(value)))
        failed = tf.logical_or(failed, tf.logical_not(tf.reduce_all(tf.math.is_finite(grad))))
        inf = tf.constant(np.inf, tf.float64)
        return tf.where(failed, inf, value), tf.where(failed, tf.zeros_like(grad), grad), failed

    def __call__(self, z):
        return self._fn(tf.convert_to_tensor(z, tf.float64))


def fit(
    prob: ODEProblem,
    times,
    data,
    *,
    observe: Callable | None = None,
    loss: Callable | None = None,
    fit_u0: bool = False,
    positive=False,
    positive_u0=False,
    optimizer="lbfgs",
    adam_steps: int = 200,
    learning_rate: float = 0.05,
    lbfgs_iterations: int = 200,
    lbfgs_tolerance: float = 1e-10,
    alg=None,
    sensealg=None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    max_steps: int = 10000,
    mask_nan: bool = False,
    jit_compile: bool = True,
    standard_errors: bool = True,
) -> FitResult:
    """Fit ``prob.p`` (and ``prob.u0`` if ``fit_u0``) to observations, starting from them.

    Args:
      prob: `ODEProblem`; its ``p`` (and ``u0``) are the initial guess.
      times: ``[T]`` observation times inside ``prob.tspan``, monotone.
      data: ``[T, *obs_shape]`` observations (``obs_shape = u0.shape`` without ``observe``).
        NaN entries raise `ValueError` unless ``mask_nan=True``, which leaves them out.
      observe: ``observe(u) -> y`` mapping saved states ``[T, *u0.shape]`` to the observed
        ``[T, *obs_shape]`` (TensorFlow ops); default the identity.
      loss: None for least squares, ``mean over observations of (y - data)^2``; or
        ``loss(y, data, mask) -> scalar`` with ``mask`` 0/1 shaped like ``data`` (NaNs in
        ``data`` replaced by 0 where ``mask`` is 0). Standard errors need least squares.
      fit_u0: also fit the initial state.
      positive: which entries of ``p`` to fit on a log scale (they stay > 0): a bool (all or
        none), a bool array broadcastable to a tensor ``p`` (per parameter), or for a flat dict /
        list ``p`` a dict / list with one bool or bool array per entry.
      positive_u0: the same for ``u0`` (bool or bool array shaped like ``u0``).
      optimizer: ``"lbfgs"``, ``"adam"``, a Keras optimizer instance, or a sequence of them
        run in turn (e.g. ``("adam", "lbfgs")``: Adam to get near, L-BFGS to converge).
      adam_steps, learning_rate: Adam (or Keras optimizer) steps and Adam's learning rate.
      lbfgs_iterations, lbfgs_tolerance: `tfp.optimizer.lbfgs_minimize`'s ``max_iterations``
        and gradient ``tolerance``.
      alg, sensealg, rtol, atol, max_steps: passed to `sensode.solve` (any sensitivity algorithm;
        default the automatic choice).
      mask_nan: mask NaN observations instead of raising.
      jit_compile: compile the loss-and-gradient function with XLA (default: compiled once,
        then every evaluation runs at compiled speed; False runs it as a plain graph).
      standard_errors: compute Gauss--Newton standard errors (least squares only).

    Returns:
      `FitResult`.

    Raises:
      ValueError: bad shapes (``data`` must have the shape of the observed output,
        ``[T, *u0.shape]`` without ``observe``; checked before optimising), NaN (without
        ``mask_nan``) or inf in ``data``, non-positive initial values of positive entries.
      TypeError: ``observe`` is not callable or does not return one tensor.
    """
    import keras
    import tensorflow_probability as tfp

    alg = Tsit5() if alg is None else alg
    obj = Objective(prob, times, data, observe=observe, loss=loss, fit_u0=fit_u0, positive=positive,
                    positive_u0=positive_u0, mask_nan=mask_nan, alg=alg, sensealg=sensealg, rtol=rtol,
                    atol=atol, max_steps=max_steps, jit_compile=jit_compile)
    z = obj.to_z(obj.theta0)
    history, failures, converged, timings = [], [0], True, []
    start = time.perf_counter()
    stages = [optimizer] if isinstance(optimizer, str) or not isinstance(optimizer, (list, tuple)) else list(optimizer)

    def evaluate(zz):
        tic = time.perf_counter()
        value, grad, failed = obj(zz)
        history.append(float(value))
        timings.append(time.perf_counter() - tic)
        failures[0] += int(bool(failed))
        return value, grad

    for stage in stages:
        if isinstance(stage, str) and stage.lower() == "lbfgs":
            res = tfp.optimizer.lbfgs_minimize(evaluate, initial_position=tf.constant(z),
                                               max_iterations=lbfgs_iterations, tolerance=lbfgs_tolerance)
            # L-BFGS reports its best point; a failed start leaves it where it was.
            if np.isfinite(float(res.objective_value)):
                z = res.position.numpy()
            converged = bool(res.converged)
        else:
            opt = keras.optimizers.Adam(learning_rate) if isinstance(stage, str) and stage.lower() == "adam" else stage
            if isinstance(stage, str) and stage.lower() != "adam":
                raise ValueError(f"unknown optimizer {stage!r}: 'adam', 'lbfgs' or a Keras optimizer")
            var = tf.Variable(z, dtype=tf.float64)
            best = (np.inf, z)
            for _ in range(adam_steps):
                value, grad = evaluate(var)
                if np.isfinite(float(value)):
                    if float(value) < best[0]:
                        best = (float(value), var.numpy())
                    opt.apply_gradients([(grad, var)])
            z = best[1]
            converged = np.isfinite(best[0])
    theta = obj.to_theta(tf.constant(z)).numpy()
    final, _, _ = obj(tf.constant(z))
    u0_hat, p_hat = obj.build(tf.constant(theta))
    result = FitResult(p=p_hat, u0=u0_hat, theta=theta, names=obj.names, loss=float(final),
                       loss_history=history, standard_errors=None, covariance=None, sigma2=None,
                       n_obs=obj.n_obs, failed_trials=failures[0], converged=converged,
                       problem=prob.remake(u0=u0_hat, p=p_hat))
    if standard_errors and loss is None and np.isfinite(float(final)):
        result.covariance, result.standard_errors, result.sigma2 = _gauss_newton(obj, theta, u0_hat, p_hat)
    result.seconds = time.perf_counter() - start
    result.first_evaluation_seconds = timings[0] if timings else 0.0
    result.seconds_per_evaluation = float(np.median(timings[1:])) if len(timings) > 1 else 0.0
    return result


def _gauss_newton(obj: Objective, theta, u0_hat, p_hat):
    """``(Cov, standard errors, s^2)`` from forward sensitivities at the estimate."""
    prob = obj.prob.remake(u0=u0_hat, p=p_hat)
    res = forward_sensitivities(prob, obj.alg, saveat=obj.times, **obj.solve_kw)
    T = int(obj.times.shape[0])
    n_u = int(prob.u0.shape.num_elements())
    blocks = []
    if obj.fit_u0:
        blocks.append(tf.reshape(res.du_du0, [T * n_u, n_u]))
    du_dp = p_leaves(res.du_dp)
    for i in obj.float_idx:
        blocks.append(tf.reshape(du_dp[i], [T * n_u, -1]))
    S = tf.cast(tf.concat(blocks, axis=1), tf.float64)  # [T n_u, n]
    u = res.u
    with tf.GradientTape() as tape:
        tape.watch(u)
        y = obj.predict(u)
    if obj.observe is None:
        J, y_flat = S, tf.reshape(y, [-1])
    else:
        G = tf.reshape(tape.jacobian(y, u), [-1, T * n_u])  # [n_y, T n_u]
        J, y_flat = tf.cast(G, tf.float64) @ S, tf.reshape(y, [-1])
    m = tf.reshape(tf.cast(obj.mask, tf.float64), [-1])
    J = J.numpy() * m.numpy()[:, None]
    r = (tf.cast(y_flat, tf.float64) - tf.reshape(tf.cast(obj.data, tf.float64), [-1])).numpy() * m.numpy()
    dof = obj.n_obs - len(theta)
    if dof <= 0:
        return None, None, None
    s2 = float(r @ r) / dof
    cov = s2 * np.linalg.pinv(J.T @ J)
    return cov, np.sqrt(np.maximum(np.diag(cov), 0.0)), s2

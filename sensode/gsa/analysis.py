"""Global sensitivity analysis of ODE models: the model wrapper and the drivers.

`ODEModel` turns an `ODEProblem`, a parameter space and an output functional
into ``y = model(theta)`` (``[N, D]`` NumPy in, ``[N, *out]`` out), running
the samples as compiled ensembles in chunks; ``model.value_and_grad`` adds
``dy/dtheta`` for DGSM. `sobol`, `morris` and `dgsm` take any such callable
(an ODE model or a plain NumPy function), draw the design, run it and call
the estimators.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import tensorflow as tf

import sensode as sd

from . import estimators, sampling
from .ensemble import deferred_forward, solve_ensemble

__all__ = ["DEFAULT_RANGES", "OUTPUTS", "ODEModel", "model_space", "named_output", "sobol", "morris", "dgsm"]

# Names of the entries of p for the models with a vector of parameters; the
# default ranges are +/- 50% around each model's nominal p.
DEFAULT_RANGES = {
    "exponential_decay": ("k",),
    "lotka_volterra": ("a", "b", "c", "d"),
    "van_der_pol": ("mu",),
    "lorenz": ("sigma", "rho", "beta"),
    "brusselator_1d": ("A", "B", "alpha"),
}

OUTPUTS = ("final", "peak", "integral", "trajectory")


def model_space(name: str, rel: float = 0.5, **model_kwargs):
    """``(prob, space)``: a model of `sensode.models` and ``nominal p * (1 -/+ rel)``.

    Args:
      name: one of ``DEFAULT_RANGES`` (models whose ``p`` is a vector).
      rel: relative half-width of the ranges (0.5: ±50%).
      **model_kwargs: passed to the model's constructor.
    """
    if name not in DEFAULT_RANGES:
        raise ValueError(f"`problem` must be one of {sorted(DEFAULT_RANGES)} (models with a parameter vector), got {name!r}")
    prob = sd.models.PROBLEMS[name](**model_kwargs)
    nominal = np.atleast_1d(np.asarray(prob.p, dtype=np.float64))
    return prob, sampling.ParameterSpace.around(nominal, rel, names=DEFAULT_RANGES[name])


def named_output(kind: str, component: int = 0):
    """An output functional ``out(t, u) -> [B]`` or ``[B, T]`` of state ``component``.

    ``"final"``: the value at the last save time; ``"peak"``: the maximum over
    the save times; ``"integral"``: the trapezoidal time integral over the save
    times; ``"trajectory"``: the values at every save time (time-resolved).
    """
    if kind not in OUTPUTS:
        raise ValueError(f"`output` must be one of {list(OUTPUTS)}, got {kind!r}")

    def out(t, u):
        x = tf.reshape(u, tf.concat([tf.shape(u)[:2], [-1]], 0))[:, :, component]
        if kind == "final":
            return x[:, -1]
        if kind == "peak":
            return tf.reduce_max(x, axis=1)
        if kind == "integral":
            dt = (t[1:] - t[:-1])[None]
            return tf.reduce_sum(0.5 * dt * (x[:, 1:] + x[:, :-1]), axis=1)
        return x

    out.__name__ = f"{kind}[{component}]"
    return out


class ODEModel:
    """``theta [N, D] -> y [N, *out]`` through ensembles of ODE solves.

    Args:
      prob: the `sensode.ODEProblem`.
      output: ``output(t, u) -> [B]`` (scalar output) or ``[B, K]``
        (time-resolved) from the save times ``t`` ``[T]`` and the ensemble's
        ``u`` ``[B, T, *u0.shape]``; a string names a `named_output` of
        state 0.
      inputs: ``inputs(theta) -> (u0, p)`` for a ``[B, D]`` tensor, batched as
        `solve_ensemble` takes them (either may be None); default: ``theta``
        is ``p`` (a parameter vector of ``D`` entries).
      batch_size: samples per compiled ensemble (the last chunk is padded, so
        one trace serves all).
      jit_compile: compile each chunk with XLA (samples run one after another
        inside, each its own loop: the fastest per-sample route on a CPU);
        False runs pfor in a graph.
      progress: None, True (a line on stderr per chunk) or
        ``callable(done, total)``.
      **solve_options: ``alg``, ``saveat``, ``rtol``, ``atol``, ``max_steps``,
        ``sensealg``, ``stepping``, ``compact``, ... of `solve_ensemble`.
        With ``compact="auto"`` (the default), values (``model(theta)``)
        are computed in up to two compiled programs: the whole chunk in one
        loop, which keeps running while the samples still running are close
        to done; and, compiled only when a chunk leaves slow samples far from
        done, those samples finished in a compacted batch (see
        `solve_ensemble`'s ``compact``). Gradients (`value_and_grad`) use
        ``compact=True``.
    """

    def __init__(self, prob, output="final", *, inputs=None, batch_size=4096, jit_compile=True, progress=None, **solve_options):
        if not isinstance(prob, sd.ODEProblem):
            raise TypeError(f"`prob` must be a sensode.ODEProblem, got {type(prob).__name__}")
        self.output = named_output(output) if isinstance(output, str) else output
        if not callable(self.output):
            raise TypeError(f"`output` must be callable as output(t, u) or one of {list(OUTPUTS)}, got {output!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}")
        for bad in ("u0", "p", "throw", "vectorize"):
            if bad in solve_options:
                raise TypeError(f"`{bad}` is not an option of ODEModel (theta gives u0 / p; failures give NaN)")
        self.prob, self.inputs, self.batch_size, self.progress = prob, inputs, batch_size, progress
        self.solve_options = solve_options
        self._f = tf.function(self._values, jit_compile=jit_compile, autograph=False)
        self._fg = tf.function(self._values_and_grads, jit_compile=jit_compile, autograph=False)
        # With compact="auto", values run in two programs: the whole batch (compiled at the first call) and,
        # compiled only when some batch leaves a long tail of slow samples, that tail compacted.
        self._deferred = solve_options.get("compact", "auto") == "auto"
        self._f_start = tf.function(lambda theta: self._values_deferred(theta, None), jit_compile=jit_compile, autograph=False)
        self._f_resume = tf.function(self._values_deferred, jit_compile=jit_compile, autograph=False)
        self.failed = 0  # samples whose solve failed in the last call

    def _u0_p(self, theta):
        if self.inputs is None:  # theta is p, reshaped to p's shape
            return None, tf.reshape(theta, tf.concat([[-1], tf.shape(self.prob.p)], 0))
        return self.inputs(theta)

    def _values(self, theta):
        u0, p = self._u0_p(theta)
        sol = solve_ensemble(self.prob, u0, p, throw=False, **self.solve_options)
        return tf.cast(self.output(sol.t, sol.u), tf.float64), sol.status

    def _values_deferred(self, theta, state):
        u0, p = self._u0_p(theta)
        sol, pending, state = deferred_forward(self.prob, u0, p, state, **self.solve_options)
        return tf.cast(self.output(sol.t, sol.u), tf.float64), sol.status, pending, state

    def _values_staged(self, theta):
        y, status, pending, state = self._f_start(theta)
        if int(pending) > 0:
            y, status, _, _ = self._f_resume(theta, state)
        return y, status

    def _values_and_grads(self, theta):
        # Samples are independent: the gradient of the batch sum is the
        # per-sample gradient. No persistent tape: the ensemble's custom
        # gradient serves one backward pass, so a time-resolved output ([B, K])
        # repeats the solve once per entry (K forward and backward passes).
        def one(k):
            with tf.GradientTape() as tape:
                tape.watch(theta)
                y, status = self._values(theta)
                target = tf.reduce_sum(y if k is None else y[:, k])
            return y, tape.gradient(target, theta), status

        y, g, status = one(None if self._out_rank == 1 else 0)
        if self._out_rank > 1:
            g = tf.stack([g] + [one(k)[1] for k in range(1, y.shape[1])], axis=-1)
        return y, tf.cast(g, tf.float64), status

    def _run(self, fn, theta):
        theta = np.asarray(theta, dtype=np.float64)
        if theta.ndim != 2:
            raise ValueError(f"`theta` must be [N, D], got shape {theta.shape}")
        n, bs = theta.shape[0], self.batch_size
        dtype = self.prob.u0.dtype
        outs, failed = [], 0
        for start in range(0, n, bs):
            chunk = theta[start : start + bs]
            pad = bs - chunk.shape[0] if n > bs else 0
            padded = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)]) if pad else chunk
            res = fn(tf.constant(padded, dtype))
            status = res[-1].numpy()[: chunk.shape[0]]
            failed += int(np.sum(status != 0))
            outs.append([r.numpy()[: chunk.shape[0]] for r in res[:-1]])
            self._report(min(start + bs, n), n)
        self.failed = failed
        return [np.concatenate(parts) for parts in zip(*outs)]

    def _report(self, done, total):
        if self.progress is True:
            print(f"sensode.gsa: {done}/{total} samples solved", file=sys.stderr, flush=True)
        elif callable(self.progress):
            self.progress(done, total)

    def __call__(self, theta):
        """``[N, D]`` -> ``[N, *out]`` outputs (NaN for failed samples)."""
        return self._run(self._values_staged if self._deferred else self._f, theta)[0]

    def value_and_grad(self, theta):
        """``(y [N, *out], dy/dtheta [N, D, *out])``."""
        if not hasattr(self, "_out_rank"):
            self._out_rank = len(np.shape(self(np.asarray(theta, np.float64)[:1])))
        y, g = self._run(self._fg, theta)
        return y, g


def _finite_rows(y, groups):
    """Boolean mask of the groups (rows of ``y`` reshaped ``[groups, -1]``) with finite outputs."""
    ok = np.isfinite(y.reshape(groups, -1)).all(axis=1)
    if not ok.all():
        warnings.warn(f"sensode.gsa: {int((~ok).sum())} of {groups} sample groups have non-finite outputs "
                      "(failed solves); they are left out of the estimate", RuntimeWarning, stacklevel=3)
    return ok


def sobol(model, space: sampling.ParameterSpace, n: int, *, sampler="sobol", seed=0, num_resamples=200, conf_level=0.95):
    """Sobol first-order and total indices of ``model`` over ``space``.

    Runs ``N (D + 2)`` model evaluations on the Saltelli design.

    Args:
      model: ``model(theta [M, D]) -> y [M, *out]`` (e.g. an `ODEModel`).
      space: the `ParameterSpace`.
      n: base samples (a power of two for ``sampler="sobol"``).
      sampler, seed: see `sampling.saltelli`.
      num_resamples, conf_level: bootstrap (see `estimators.sobol_indices`).

    Returns:
      `SobolResult`. Base samples with a failed solve are left out (a warning
      says how many).
    """
    design = sampling.saltelli(space, n, sampler=sampler, seed=seed)
    y = np.asarray(model(design.stacked()), dtype=np.float64)
    y_a, y_b, y_ab = design.split(y)
    ok = _finite_rows(y, design.n)
    return estimators.sobol_indices(
        y_a[ok], y_b[ok], y_ab[ok], names=space.names, num_resamples=num_resamples, conf_level=conf_level, seed=seed
    )


def morris(model, space: sampling.ParameterSpace, r: int, *, levels=4, sampler="random", seed=0, num_resamples=200, conf_level=0.95):
    """Morris screening of ``model`` with ``r`` trajectories (``r (D + 1)`` evaluations).

    Returns:
      `MorrisResult` (effects per unit of the normalised input).
    """
    design = sampling.morris_trajectories(space, r, levels=levels, sampler=sampler, seed=seed)
    d = space.dim
    y = np.asarray(model(design.x.reshape(-1, d)), dtype=np.float64)
    y = y.reshape((r, d + 1) + y.shape[1:])
    ok = _finite_rows(y, r)
    return estimators.morris_indices(
        design.unit[ok], y[ok], names=space.names, num_resamples=num_resamples, conf_level=conf_level, seed=seed
    )


def dgsm(model, space: sampling.ParameterSpace, n: int, *, sampler="sobol", seed=0, num_resamples=200, conf_level=0.95):
    """DGSM ``nu_i = E[(dY/dtheta_i)^2]`` and the total-index bound from ``n`` gradients.

    Args:
      model: an `ODEModel` (or any object with ``value_and_grad(theta) ->
        (y [M, *out], grad [M, D, *out])``).

    Returns:
      `DGSMResult`.
    """
    if not hasattr(model, "value_and_grad"):
        raise TypeError("`model` needs value_and_grad(theta) -> (y, dy/dtheta) for DGSM (an ODEModel has it)")
    theta = sampling.uniform(space, n, sampler=sampler, seed=seed)
    y, g = model.value_and_grad(theta)
    y, g = np.asarray(y, np.float64), np.asarray(g, np.float64)
    ok = np.isfinite(y.reshape(n, -1)).all(1) & np.isfinite(g.reshape(n, -1)).all(1)
    if not ok.all():
        warnings.warn(f"sensode.gsa: {int((~ok).sum())} of {n} samples failed and are left out", RuntimeWarning, stacklevel=2)
    return estimators.dgsm_indices(
        y[ok], g[ok], space.bounds, names=space.names, num_resamples=num_resamples, conf_level=conf_level, seed=seed
    )

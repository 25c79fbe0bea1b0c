"""Estimators of global sensitivity indices, with bootstrap confidence intervals.

Plain NumPy on model outputs that are already computed: the estimators do not
care whether the outputs came from an ODE ensemble, a closed-form function or
SALib's samplers. Outputs may carry trailing axes (e.g. a time axis): every
index is then computed per trailing entry (time-resolved indices).

Conventions (shared with SALib, so that the two agree on the same samples):
the output variance is ``np.var`` (``ddof=0``) of the pooled ``A`` and ``B``
outputs; Morris elementary effects are measured per unit of the normalised
input (the step ``Delta`` on ``[0, 1]``); bootstrap confidence intervals
resample the base samples (rows), keeping the ``A``/``B``/``AB_i`` rows of a
base sample together.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats as _stats

__all__ = ["SobolResult", "MorrisResult", "DGSMResult", "sobol_indices", "morris_indices", "dgsm_indices"]


def _z(conf_level: float) -> float:
    if not 0.0 < conf_level < 1.0:
        raise ValueError(f"`conf_level` must be in (0, 1), got {conf_level}")
    return float(_stats.norm.ppf(0.5 + conf_level / 2.0))


def _check_resamples(num_resamples):
    if not isinstance(num_resamples, (int, np.integer)) or isinstance(num_resamples, bool) or num_resamples < 0:
        raise ValueError(f"`num_resamples` must be a non-negative int, got {num_resamples!r}")


def _bootstrap(stat, n, num_resamples, conf_level, rng):
    """``(half_width, lower, upper)`` of ``stat(rows)`` over row resamples.

    ``half_width`` is SALib's ``z * std`` (normal approximation); ``lower`` and
    ``upper`` are the percentile interval. With ``num_resamples == 0`` all
    three are NaN.
    """
    point = stat(np.arange(n))
    if num_resamples == 0:
        nan = np.full_like(point, np.nan)
        return nan, nan, nan
    draws = np.stack([stat(rng.integers(0, n, size=n)) for _ in range(num_resamples)])
    alpha = 1.0 - conf_level
    lower, upper = np.quantile(draws, [alpha / 2.0, 1.0 - alpha / 2.0], axis=0)
    return _z(conf_level) * draws.std(axis=0, ddof=1), lower, upper


@dataclasses.dataclass(frozen=True)
class SobolResult:
    """First-order and total Sobol indices.

    Attributes:
      names: ``D`` parameter names.
      S1, ST: ``[D, *out]`` first-order (Saltelli 2010) and total (Jansen)
        indices; ``out`` is the trailing shape of the outputs (``()`` for a
        scalar output, ``(T,)`` for a time-resolved one).
      S1_conf, ST_conf: ``[D, *out]`` half-widths ``z * std`` of the bootstrap
        distribution (SALib's ``*_conf``).
      S1_ci, ST_ci: ``[2, D, *out]`` percentile bootstrap intervals.
      variance: ``[*out]`` output variance.
      n: number of base samples.
    """

    names: tuple
    S1: np.ndarray
    ST: np.ndarray
    S1_conf: np.ndarray
    ST_conf: np.ndarray
    S1_ci: np.ndarray
    ST_ci: np.ndarray
    variance: np.ndarray
    n: int

    def to_dict(self) -> dict:
        """JSON-ready dict (lists of floats)."""
        return _to_dict(self)


@dataclasses.dataclass(frozen=True)
class MorrisResult:
    """Morris elementary-effect statistics.

    Attributes:
      names: ``D`` parameter names.
      mu, mu_star, sigma: ``[D, *out]`` mean, mean absolute value and standard
        deviation (``ddof=1``) of the elementary effects, per unit of the
        normalised input.
      mu_star_conf: ``[D, *out]`` bootstrap half-width of ``mu_star``.
      mu_star_ci: ``[2, D, *out]`` percentile interval of ``mu_star``.
      n: number of trajectories.
    """

    names: tuple
    mu: np.ndarray
    mu_star: np.ndarray
    sigma: np.ndarray
    mu_star_conf: np.ndarray
    mu_star_ci: np.ndarray
    n: int

    def to_dict(self) -> dict:
        return _to_dict(self)


@dataclasses.dataclass(frozen=True)
class DGSMResult:
    """Derivative-based global sensitivity measures.

    Attributes:
      names: ``D`` parameter names.
      nu: ``[D, *out]`` ``E[(dY/dtheta_i)^2]`` (physical units of ``theta``).
      bound: ``[D, *out]`` the upper bound ``nu_i (b_i - a_i)^2 / (pi^2 Var Y)``
        on the total Sobol index of a uniform input on ``[a_i, b_i]``.
      nu_conf, bound_conf: bootstrap half-widths.
      bound_ci: ``[2, D, *out]`` percentile interval of ``bound``.
      variance: ``[*out]`` output variance.
      n: number of samples.
    """

    names: tuple
    nu: np.ndarray
    bound: np.ndarray
    nu_conf: np.ndarray
    bound_conf: np.ndarray
    bound_ci: np.ndarray
    variance: np.ndarray
    n: int

    def to_dict(self) -> dict:
        return _to_dict(self)


def _to_dict(result) -> dict:
    out = {}
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        out[field.name] = np.asarray(value).tolist() if isinstance(value, np.ndarray) else value
    out["names"] = list(result.names)
    return out


def _names(names, d):
    if names is None:
        return tuple(f"x{i}" for i in range(d))
    names = tuple(str(n) for n in names)
    if len(names) != d:
        raise ValueError(f"`names` must have {d} entries (one per parameter), got {len(names)}")
    return names


def _as_float(x, name):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        raise ValueError(f"`{name}` must have a leading sample axis, got a scalar")
    return x


def _ratio(num, den):
    """``num / den``, 0 where the variance vanishes (a constant output)."""
    tiny = np.finfo(np.float64).eps
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den > tiny)


def sobol_indices(y_a, y_b, y_ab, *, names=None, num_resamples=200, conf_level=0.95, seed=0) -> SobolResult:
    """First-order and total Sobol indices from the Saltelli design.

    With ``A`` and ``B`` two independent ``[N, D]`` input samples and ``AB_i``
    equal to ``A`` with column ``i`` taken from ``B``:
    ``S1_i = mean(f(B) (f(AB_i) - f(A))) / V`` (Saltelli et al. 2010, the
    estimator of their table 2 (b)) and
    ``ST_i = mean((f(A) - f(AB_i))^2) / (2 V)`` (Jansen 1999), with
    ``V = var([f(A); f(B)])`` and ``f`` centred on the mean of all runs (as
    SALib does).

    Args:
      y_a, y_b: ``[N, *out]`` outputs on ``A`` and ``B``.
      y_ab: ``[N, D, *out]`` outputs on ``AB_i``.
      names: ``D`` parameter names (default ``x0, x1, ...``).
      num_resamples: bootstrap resamples of the ``N`` base samples (0: no
        confidence intervals).
      conf_level: confidence level of the intervals.
      seed: seed of the bootstrap's random generator.

    Returns:
      `SobolResult`.

    References: Saltelli, Annoni, Azzini, Campolongo, Ratto & Tarantola (2010),
    Comput. Phys. Commun. 181:259-270; Jansen (1999), Comput. Phys. Commun.
    117:35-43.
    """
    y_a, y_b, y_ab = _as_float(y_a, "y_a"), _as_float(y_b, "y_b"), _as_float(y_ab, "y_ab")
    if y_a.shape != y_b.shape:
        raise ValueError(f"`y_a` and `y_b` must have one shape, got {y_a.shape} and {y_b.shape}")
    if y_ab.ndim < 2 or y_ab.shape[0] != y_a.shape[0] or y_ab.shape[2:] != y_a.shape[1:]:
        raise ValueError(f"`y_ab` must be [N, D, *out] = [{y_a.shape[0]}, D, *{y_a.shape[1:]}], got {y_ab.shape}")
    _check_resamples(num_resamples)
    _z(conf_level)  # validates it before any work
    n, d = y_ab.shape[:2]
    rng = np.random.default_rng(seed)
    # Centre on the mean of all runs, as SALib does: S1's estimator carries a
    # term E[Y] mean(f(AB_i) - f(A)) whose noise grows with |E[Y]|.
    centre = np.mean(np.concatenate([y_a, y_b, y_ab.reshape((-1,) + y_a.shape[1:])]), axis=0)
    y_a, y_b, y_ab = y_a - centre, y_b - centre, y_ab - centre

    def estimate(rows):
        a, b, ab = y_a[rows], y_b[rows], y_ab[rows]
        var = np.var(np.concatenate([a, b]), axis=0)
        s1 = _ratio(np.mean(b[:, None] * (ab - a[:, None]), axis=0), var)
        st = _ratio(0.5 * np.mean((a[:, None] - ab) ** 2, axis=0), var)
        return np.stack([s1, st])

    both = estimate(np.arange(n))
    conf, lower, upper = _bootstrap(estimate, n, num_resamples, conf_level, rng)
    return SobolResult(
        names=_names(names, d),
        S1=both[0],
        ST=both[1],
        S1_conf=conf[0],
        ST_conf=conf[1],
        S1_ci=np.stack([lower[0], upper[0]]),
        ST_ci=np.stack([lower[1], upper[1]]),
        variance=np.var(np.concatenate([y_a, y_b]), axis=0),
        n=int(n),
    )


def morris_indices(x_unit, y, *, names=None, num_resamples=200, conf_level=0.95, seed=0) -> MorrisResult:
    """Morris screening statistics from one-at-a-time trajectories.

    Each trajectory moves one input at a time; the elementary effect of the
    input moved between points ``k`` and ``k + 1`` is
    ``(y[k + 1] - y[k]) / (x[k + 1] - x[k])`` in normalised units.

    Args:
      x_unit: ``[r, D + 1, D]`` trajectories on the unit hypercube.
      y: ``[r, D + 1, *out]`` outputs at the trajectory points.
      names: ``D`` parameter names.
      num_resamples, conf_level, seed: bootstrap of ``mu_star`` over
        trajectories.

    Returns:
      `MorrisResult` (``mu``, ``mu_star``, ``sigma`` per input).

    Raises:
      ValueError: a step of a trajectory moves no input or several.

    References: Morris (1991), Technometrics 33:161-174; ``mu_star``:
    Campolongo, Cariboni & Saltelli (2007), Environ. Model. Softw. 22:1509-1518.
    """
    x = _as_float(x_unit, "x_unit")
    y = _as_float(y, "y")
    if x.ndim != 3 or x.shape[1] != x.shape[2] + 1:
        raise ValueError(f"`x_unit` must be [r, D + 1, D], got {x.shape}")
    if y.shape[:2] != x.shape[:2]:
        raise ValueError(f"`y` must be [r, D + 1, *out] = [{x.shape[0]}, {x.shape[1]}, ...], got {y.shape}")
    _check_resamples(num_resamples)
    _z(conf_level)  # validates it before any work
    r, _, d = x.shape
    dx = np.diff(x, axis=1)  # [r, D, D]: step k moves one input
    moved = np.abs(dx) > 1e-12
    if not np.all(moved.sum(axis=2) == 1):
        raise ValueError("`x_unit` is not a set of one-at-a-time trajectories: each step must move exactly one input")
    which = np.argmax(moved, axis=2)  # [r, D]
    step = np.take_along_axis(dx, which[..., None], axis=2)[..., 0]  # [r, D]
    dy = np.diff(y, axis=1)  # [r, D, *out]
    ee_steps = dy / step.reshape(step.shape + (1,) * (dy.ndim - 2))
    ee = np.empty_like(ee_steps)  # [r, D(input), *out]
    rows = np.arange(r)[:, None]
    ee[rows, which] = ee_steps
    rng = np.random.default_rng(seed)
    conf, lower, upper = _bootstrap(lambda rows: np.mean(np.abs(ee[rows]), axis=0), r, num_resamples, conf_level, rng)
    return MorrisResult(
        names=_names(names, d),
        mu=ee.mean(axis=0),
        mu_star=np.abs(ee).mean(axis=0),
        sigma=ee.std(axis=0, ddof=1) if r > 1 else np.full(ee.shape[1:], np.nan),
        mu_star_conf=conf,
        mu_star_ci=np.stack([lower, upper]),
        n=int(r),
    )


def dgsm_indices(y, grad, bounds, *, names=None, num_resamples=200, conf_level=0.95, seed=0) -> DGSMResult:
    """Derivative-based global sensitivity measures and the Sobol-total bound.

    ``nu_i = E[(dY/dtheta_i)^2]`` over samples drawn from the input
    distribution. For independent uniform inputs on ``[a_i, b_i]`` the total
    Sobol index satisfies ``ST_i <= nu_i (b_i - a_i)^2 / (pi^2 V)`` (Sobol &
    Kucherenko 2009): a small bound proves an input unimportant, at the cost of
    one gradient per sample instead of ``D + 2`` solves.

    Args:
      y: ``[N, *out]`` outputs at the samples (for the variance ``V``).
      grad: ``[N, D, *out]`` derivatives ``dY/dtheta`` at the same samples.
      bounds: ``[D, 2]`` lower and upper bounds of the uniform inputs.
      names, num_resamples, conf_level, seed: as in `sobol_indices`.

    Returns:
      `DGSMResult`.

    References: Sobol & Kucherenko (2009), Math. Comput. Simul. 79:3009-3017;
    Lamboni, Iooss, Popelin & Gamboa (2013), Math. Comput. Simul. 87:45-54.
    """
    y, grad = _as_float(y, "y"), _as_float(grad, "grad")
    bounds = np.asarray(bounds, dtype=np.float64)
    if grad.ndim < 2 or grad.shape[0] != y.shape[0] or grad.shape[2:] != y.shape[1:]:
        raise ValueError(f"`grad` must be [N, D, *out] = [{y.shape[0]}, D, *{y.shape[1:]}], got {grad.shape}")
    d = grad.shape[1]
    if bounds.shape != (d, 2) or not np.all(bounds[:, 1] > bounds[:, 0]):
        raise ValueError(f"`bounds` must be [D, 2] = [{d}, 2] with lower < upper, got {bounds.tolist()}")
    _check_resamples(num_resamples)
    _z(conf_level)  # validates it before any work
    width2 = ((bounds[:, 1] - bounds[:, 0]) ** 2).reshape((d,) + (1,) * (grad.ndim - 2))
    rng = np.random.default_rng(seed)

    def estimate(rows):
        nu = np.mean(grad[rows] ** 2, axis=0)
        return np.stack([nu, _ratio(nu * width2, np.pi**2 * np.var(y[rows], axis=0))])

    point = estimate(np.arange(y.shape[0]))
    conf, lower, upper = _bootstrap(estimate, y.shape[0], num_resamples, conf_level, rng)
    return DGSMResult(
        names=_names(names, d),
        nu=point[0],
        bound=point[1],
        nu_conf=conf[0],
        bound_conf=conf[1],
        bound_ci=np.stack([lower[1], upper[1]]),
        variance=np.var(y, axis=0),
        n=int(y.shape[0]),
    )

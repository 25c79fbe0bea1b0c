"""Sampling designs: the parameter space, the Saltelli design, Morris trajectories.

Scrambled Sobol sequences come from `scipy.stats.qmc.Sobol` (no SALib needed);
``sampler="salib"`` draws the same kind of design with SALib (the ``gsa``
extra) for those who want SALib's exact sequences.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.stats import qmc

__all__ = ["ParameterSpace", "SaltelliDesign", "MorrisDesign", "saltelli", "morris_trajectories", "uniform"]

_SAMPLERS = ("sobol", "random", "salib")


def _check_sampler(sampler):
    if sampler not in _SAMPLERS:
        raise ValueError(f"`sampler` must be one of {list(_SAMPLERS)}, got {sampler!r}")


def _check_n(n, name="n"):
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 2:
        raise ValueError(f"`{name}` must be an int >= 2, got {n!r}")


@dataclasses.dataclass(frozen=True)
class ParameterSpace:
    """Independent uniform inputs ``theta_i ~ U(lower_i, upper_i)``.

    Attributes:
      names: ``D`` names.
      bounds: ``[D, 2]`` float64 array of lower and upper bounds.
    """

    names: tuple
    bounds: np.ndarray

    def __post_init__(self):
        bounds = np.asarray(self.bounds, dtype=np.float64)
        names = tuple(str(n) for n in self.names)
        if bounds.ndim != 2 or bounds.shape[1] != 2 or bounds.shape[0] != len(names) or not len(names):
            raise ValueError(f"`bounds` must be [D, 2] with D = len(names) = {len(names)} > 0, got shape {bounds.shape}")
        if not np.all(np.isfinite(bounds)) or not np.all(bounds[:, 1] > bounds[:, 0]):
            raise ValueError(f"`bounds` must be finite with lower < upper, got {bounds.tolist()}")
        object.__setattr__(self, "bounds", bounds)
        object.__setattr__(self, "names", names)

    @classmethod
    def around(cls, nominal, rel=0.5, names=None) -> "ParameterSpace":
        """``nominal * (1 -/+ rel)`` for each entry (bounds sorted for negative values).

        Args:
          nominal: ``[D]`` nominal values (non-zero).
          rel: relative half-width, in ``(0, 1)`` by default 0.5 (±50%).
          names: ``D`` names (default ``p0, p1, ...``).
        """
        nominal = np.asarray(nominal, dtype=np.float64).reshape(-1)
        if not 0.0 < rel:
            raise ValueError(f"`rel` must be positive, got {rel}")
        if np.any(nominal == 0):
            raise ValueError("`nominal` has a zero entry: a relative range around it is empty; give bounds instead")
        lo, hi = nominal * (1.0 - rel), nominal * (1.0 + rel)
        names = tuple(f"p{i}" for i in range(nominal.size)) if names is None else tuple(names)
        return cls(names, np.stack([np.minimum(lo, hi), np.maximum(lo, hi)], axis=1))

    @property
    def dim(self) -> int:
        return len(self.names)

    def scale(self, unit):
        """Map ``[..., D]`` points of the unit hypercube to the bounds."""
        unit = np.asarray(unit, dtype=np.float64)
        return self.bounds[:, 0] + unit * (self.bounds[:, 1] - self.bounds[:, 0])

    def to_salib(self) -> dict:
        """SALib's problem dict."""
        return {"num_vars": self.dim, "names": list(self.names), "bounds": self.bounds.tolist()}


@dataclasses.dataclass(frozen=True)
class SaltelliDesign:
    """``A``, ``B`` (``[N, D]``) and ``AB`` (``[N, D, D]``, ``AB[:, i]`` is ``A``
    with column ``i`` from ``B``), in physical units."""

    A: np.ndarray
    B: np.ndarray
    AB: np.ndarray

    @property
    def n(self) -> int:
        return self.A.shape[0]

    def stacked(self) -> np.ndarray:
        """``[N (D + 2), D]`` rows in SALib's order: per base sample ``A, AB_1..AB_D, B``."""
        return np.concatenate([self.A[:, None], self.AB, self.B[:, None]], axis=1).reshape(-1, self.A.shape[1])

    def split(self, y):
        """Outputs ``[N (D + 2), *out]`` in `stacked` order -> ``(y_a, y_b, y_ab)``."""
        y = np.asarray(y)
        n, d = self.A.shape
        if y.shape[0] != n * (d + 2):
            raise ValueError(f"`y` must have N (D + 2) = {n * (d + 2)} rows, got {y.shape[0]}")
        y = y.reshape((n, d + 2) + y.shape[1:])
        return y[:, 0], y[:, -1], y[:, 1:-1]


def _unit(n, d, sampler, seed):
    if sampler == "sobol":
        # Balance properties hold for powers of two; SciPy warns otherwise.
        sob = qmc.Sobol(d=d, scramble=True, seed=seed)
        m = int(np.ceil(np.log2(n)))
        return sob.random_base2(m)[:n]
    return np.random.default_rng(seed).random((n, d))


def saltelli(space: ParameterSpace, n: int, *, sampler: str = "sobol", seed: int = 0) -> SaltelliDesign:
    """The ``A``/``B``/``AB_i`` design of ``N`` base samples (``N (D + 2)`` model runs).

    Args:
      space: the `ParameterSpace`.
      n: base samples ``N`` (a power of two for a Sobol sequence).
      sampler: ``"sobol"`` (scrambled Sobol sequence of dimension ``2 D``:
        ``A`` its first ``D`` columns, ``B`` the last, as SALib does),
        ``"random"`` (independent uniform) or ``"salib"`` (SALib's
        ``sobol.sample`` with ``calc_second_order=False``).
      seed: random seed.

    Returns:
      `SaltelliDesign`.

    References: Saltelli et al. (2010), Comput. Phys. Commun. 181:259-270.
    """
    _check_sampler(sampler)
    _check_n(n)
    d = space.dim
    if sampler == "salib":
        from SALib.sample import sobol as salib_sobol  # the optional `gsa` extra

        x = salib_sobol.sample(space.to_salib(), n, calc_second_order=False, seed=seed).reshape(n, d + 2, d)
        return SaltelliDesign(A=x[:, 0], B=x[:, -1], AB=x[:, 1:-1])
    ab = _unit(n, 2 * d, sampler, seed)
    a, b = space.scale(ab[:, :d]), space.scale(ab[:, d:])
    mix = np.repeat(a[:, None], d, axis=1)
    idx = np.arange(d)
    mix[:, idx, idx] = b
    return SaltelliDesign(A=a, B=b, AB=mix)


@dataclasses.dataclass(frozen=True)
class MorrisDesign:
    """``r`` one-at-a-time trajectories: ``unit`` ``[r, D + 1, D]`` on the unit
    hypercube and ``x`` the same points in physical units."""

    unit: np.ndarray
    x: np.ndarray


def morris_trajectories(space: ParameterSpace, r: int, *, levels: int = 4, sampler: str = "random", seed: int = 0) -> MorrisDesign:
    """Morris trajectories on a ``levels``-level grid with step ``levels / (2 (levels - 1))``.

    Each trajectory starts from a random grid point and moves every input once,
    in random order, by ``+/- Delta``.

    Args:
      space: the `ParameterSpace`.
      r: number of trajectories.
      levels: grid levels (even, >= 2).
      sampler: ``"random"`` (this module) or ``"salib"`` (SALib's
        ``morris.sample``).
      seed: random seed.

    References: Morris (1991), Technometrics 33:161-174.
    """
    if sampler not in ("random", "salib"):
        raise ValueError(f"`sampler` must be 'random' or 'salib' for Morris trajectories, got {sampler!r}")
    _check_n(r, "r")
    if not isinstance(levels, int) or levels < 2 or levels % 2:
        raise ValueError(f"`levels` must be an even int >= 2, got {levels!r}")
    d = space.dim
    lo, width = space.bounds[:, 0], space.bounds[:, 1] - space.bounds[:, 0]
    if sampler == "salib":
        from SALib.sample import morris as salib_morris

        x = salib_morris.sample(space.to_salib(), r, num_levels=levels, seed=seed).reshape(r, d + 1, d)
        return MorrisDesign(unit=(x - lo) / width, x=x)
    rng = np.random.default_rng(seed)
    delta = levels / (2.0 * (levels - 1))
    grid = np.arange(levels) / (levels - 1)
    up = rng.random((r, d)) < 0.5
    # Start where the move stays inside [0, 1]: below 1 - Delta going up, above Delta going down.
    start_up = rng.choice(grid[grid <= 1.0 - delta + 1e-12], size=(r, d))
    start_down = rng.choice(grid[grid >= delta - 1e-12], size=(r, d))
    x0 = np.where(up, start_up, start_down)
    steps = np.where(up, delta, -delta)
    unit = np.empty((r, d + 1, d))
    unit[:, 0] = x0
    order = np.argsort(rng.random((r, d)), axis=1)
    rows = np.arange(r)
    for k in range(d):
        unit[:, k + 1] = unit[:, k]
        j = order[:, k]
        unit[rows, k + 1, j] += steps[rows, j]
    unit = np.clip(unit, 0.0, 1.0)
    return MorrisDesign(unit=unit, x=space.scale(unit))


def uniform(space: ParameterSpace, n: int, *, sampler: str = "sobol", seed: int = 0) -> np.ndarray:
    """``[n, D]`` samples of the uniform inputs (``"sobol"`` or ``"random"``), e.g. for DGSM."""
    if sampler not in ("sobol", "random"):
        raise ValueError(f"`sampler` must be 'sobol' or 'random', got {sampler!r}")
    _check_n(n)
    return space.scale(_unit(n, space.dim, sampler, seed))

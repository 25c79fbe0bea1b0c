"""Problem definitions: what to solve, never how.

A problem keeps the caller's inputs as given (`f`, `u0`, `tspan`, `p`); the
checks that need the solver's options (dtypes against tolerances, save times)
happen in the entry points, which convert inputs to tensors.
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf

__all__ = ["ODEProblem", "NonlinearProblem", "SteadyStateProblem", "check_u0"]


def _check_callable(f, name: str, signature: str):
    if not callable(f):
        raise TypeError(f"`{name}` must be callable as {signature}, got {type(f).__name__}")


def check_u0(u0):
    """Convert `u0` to a float32 / float64 tensor with at least one element.

    Raises:
      TypeError: ``u0`` is not a tensor-like, not floating, or float16 /
        bfloat16.
      ValueError: ``u0`` is empty.
    """
    if isinstance(u0, tf.Variable):
        u0 = tf.convert_to_tensor(u0)
    try:
        t = tf.convert_to_tensor(u0)
    except (TypeError, ValueError, tf.errors.InvalidArgumentError) as e:
        if isinstance(u0, (dict, list, tuple)):
            raise TypeError(
                f"`u0` must be one floating tensor, got a {type(u0).__name__} that does not convert to one "
                "(a nest of states is not supported: concatenate the parts into one tensor and split it in `f`)"
            ) from None
        raise TypeError(f"`u0` must be a floating tensor, got {type(u0).__name__}: {e}") from None
    if not t.dtype.is_floating:
        raise TypeError(
            f"`u0` must have a floating dtype (float32 or float64), got {t.dtype.name}; "
            "write e.g. `tf.constant([1.0, 2.0])`"
        )
    if t.dtype not in (tf.float32, tf.float64):
        # Error norms, step-size control and tolerances need more than the
        # 3 (bfloat16) or 4 (float16) digits these carry: a solve would reject
        # every step, or fail inside NumPy, so refuse them here.
        raise TypeError(
            f"`u0` has dtype {t.dtype.name}: float16/bfloat16 are not supported; use float32 or float64 "
            "(e.g. `tf.cast(u0, tf.float32)`)"
        )
    if t.shape.num_elements() == 0:
        raise ValueError(f"`u0` is empty (shape {t.shape}): the state needs at least one element")
    return t


class ODEProblem:
    """An initial value problem ``du/dt = f(t, u, p)``, ``u(t0) = u0``.

    Args:
      f: callable ``f(t, u, p) -> du/dt`` with the shape and dtype of ``u``.
        ``t`` is a scalar tensor, ``u`` a tensor shaped like ``u0``.
      u0: floating tensor of any shape ``[*batch, *state]``; leading dimensions
        are treated as part of the state (one shared step size).
      tspan: ``(t0, t1)``; ``t1 < t0`` integrates backwards in time.
      p: ``None``, a tensor, or a nest (dict / list / tuple) of tensors, passed
        to ``f`` unchanged. Gradients flow to it explicitly, never through
        tensors that ``f`` closes over.
      jac: optional ``jac(t, u, p) -> df/du``, the Jacobian of ``f`` with
        respect to the state, used by the stiff methods (`Rodas5`,
        `Rosenbrock23`, `Kvaerno5`, the stiff steps of `AutoTsit5Rodas5`)
        for their Newton / W matrix instead of automatic differentiation.
        Shape ``[N, N]`` with ``N = u.size``: ``J[i, j] = d f_i / d u_j`` for
        ``u`` and ``f`` flattened in row-major (C) order. For a state of rank
        2 or more, ``[*batch, n]``, it may instead return the per-system
        blocks ``[*batch, n, n]`` (``J[b, i, j] = d f[b, i] / d u[b, j]``;
        the systems must then be independent): sensode assembles the
        block-diagonal ``[N, N]``. Same dtype as ``u0``. Any other shape
        raises a `ValueError` naming ``jac`` when the solve is traced. ``df/dt``
        (non-autonomous ``f``, Rosenbrock methods) still comes from automatic
        differentiation. ``jac`` must be exact for `Rodas5` (not a W-method);
        `Kvaerno5` and `Rosenbrock23` tolerate an approximate one. Explicit
        methods ignore it. The solution depends on ``jac`` only through the
        steps it produces: gradients flow through it like through any other
        part of the method (`DiscreteAdjoint` differentiates it; the other
        algorithms do not need its derivatives).

    The inputs are kept as attributes ``f``, ``u0``, ``tspan``, ``p``, ``jac``.
    """

    def __init__(self, f: Callable, u0: Any, tspan, p: Any = None, *, jac: Callable | None = None):
        _check_callable(f, "f", "f(t, u, p)")
        if jac is not None:
            _check_callable(jac, "jac", "jac(t, u, p) -> df/du")
        self.f = f
        self.jac = jac
        self.u0 = check_u0(u0)
        if not isinstance(tspan, (tuple, list)) and not (tf.is_tensor(tspan) and tspan.shape == (2,)):
            raise TypeError(f"`tspan` must be a pair (t0, t1), got {tspan!r}")
        if isinstance(tspan, (tuple, list)) and len(tspan) != 2:
            raise ValueError(f"`tspan` must have exactly two entries (t0, t1), got {len(tspan)}")
        self.tspan = tuple(tspan) if isinstance(tspan, (tuple, list)) else (tspan[0], tspan[1])
        self.p = p

    def remake(self, *, u0=None, tspan=None, p=None, f=None, jac=None) -> "ODEProblem":
        """A copy with some inputs replaced (as `remake` in SciML); ``jac`` is kept unless replaced."""
        return ODEProblem(
            f if f is not None else self.f,
            u0 if u0 is not None else self.u0,
            tspan if tspan is not None else self.tspan,
            p if p is not None else self.p,
            jac=jac if jac is not None else self.jac,
        )

    def __repr__(self) -> str:
        return f"ODEProblem(u0 shape={tuple(self.u0.shape)}, dtype={self.u0.dtype.name}, tspan={self.tspan})"


class NonlinearProblem:
    """A nonlinear system ``f(u, p) = 0``.

    Args:
      f: residual ``f(u, p)`` with the shape and dtype of ``u``.
      u0: initial guess, floating tensor ``[*batch, n]``.
      p: ``None``, a tensor, or a nest of tensors.
    """

    def __init__(self, f: Callable, u0: Any, p: Any = None):
        _check_callable(f, "f", "f(u, p)")
        self.f = f
        self.u0 = check_u0(u0)
        self.p = p

    def __repr__(self) -> str:
        return f"NonlinearProblem(u0 shape={tuple(self.u0.shape)}, dtype={self.u0.dtype.name})"


class SteadyStateProblem:
    """The steady state ``f(t, u, p) = 0`` of an ODE right-hand side.

    Args:
      f: the same ``f(t, u, p)`` an `ODEProblem` takes.
      u0: initial guess (and initial state for `DynamicSS`).
      p: ``None``, a tensor, or a nest of tensors.
    """

    def __init__(self, f: Callable, u0: Any, p: Any = None):
        _check_callable(f, "f", "f(t, u, p)")
        self.f = f
        self.u0 = check_u0(u0)
        self.p = p

    def __repr__(self) -> str:
        return f"SteadyStateProblem(u0 shape={tuple(self.u0.shape)}, dtype={self.u0.dtype.name})"

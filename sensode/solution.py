"""Status codes, solver errors and the solution containers."""

from __future__ import annotations

import re

import dataclasses
import enum
from typing import Any

import tensorflow as tf

__all__ = ["Status", "SolverError", "ODESolution", "NonlinearSolution", "status_message", "raise_if_failed"]


class Status(enum.IntEnum):
    """Integer status of a solve; ``SUCCESS == 0``.

    Inside a graph nothing raises: the status travels as an ``int32`` tensor and
    the eager entry points turn a non-zero status into a `SolverError`.
    """

    SUCCESS = 0
    MAX_STEPS = 1
    DT_MIN = 2
    NONFINITE = 3
    MAX_ITERS = 4
    SINGULAR = 5
    INVALID_INPUT = 6


_MESSAGES = {
    Status.SUCCESS: "success",
    Status.MAX_STEPS: "the step limit `max_steps` was reached before the end of the time span",
    Status.DT_MIN: "the step size fell below the minimum `dtmin` (the problem may be stiff or singular)",
    Status.NONFINITE: "non-finite values (NaN or Inf) appeared in the solution",
    Status.MAX_ITERS: "no convergence within `max_iters` iterations",
    Status.SINGULAR: "the Jacobian is singular (or the linear solve failed)",
    Status.INVALID_INPUT: "an input known only at run time is invalid (e.g. `saveat` unsorted or outside `tspan`)",
}


def status_message(status) -> str:
    """Readable message of a status code (a Python int or a concrete tensor)."""
    code = int(status)
    try:
        return _MESSAGES[Status(code)]
    except ValueError:
        return f"unknown status {code}"


class SolverError(RuntimeError):
    """Raised in eager mode when a solve fails and ``throw=True``."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        if status is None:
            # Frameworks that re-raise with added context (Keras wraps errors
            # raised in ``Layer.call`` as ``type(e)(new_message)``) pass only
            # the message: recover the code from it.
            found = re.search(r"status (\d+)", str(message))
            status = int(found.group(1)) if found else None
        self.status = status


def raise_if_failed(status, what: str = "solve") -> None:
    """Raise `SolverError` if ``status`` is concrete and non-zero.

    Symbolic tensors (inside `tf.function`) are left alone: a graph cannot raise,
    the caller reads the status instead.
    """
    value = tf.get_static_value(status) if tf.is_tensor(status) else status
    if value is None:
        return
    if int(value) != Status.SUCCESS:
        raise SolverError(f"{what} failed: {status_message(value)} (status {int(value)})", int(value))


class _HasStatus:
    """``success`` and ``message`` from a ``status`` attribute."""

    @property
    def success(self):
        """Boolean tensor: ``status == 0``."""
        return tf.equal(self.status, Status.SUCCESS)

    @property
    def message(self) -> str:
        """Readable status message (eager mode only; a graph has no values)."""
        value = tf.get_static_value(self.status)
        if value is None:
            return "status is symbolic inside tf.function; read `status` instead"
        return status_message(value)


@dataclasses.dataclass(frozen=True)
class ODESolution(_HasStatus):
    """The result of `sensode.solve` on an `ODEProblem`.

    Attributes:
      t: ``[T]`` save times.
      u: ``[T, *u0.shape]`` states at the save times.
      stats: dict of scalar ``int32`` tensors: ``nfe`` (right-hand side
        evaluations), ``steps`` (attempted steps), ``accepted``, ``rejected``.
      status: scalar ``int32`` tensor, 0 on success (see `Status`).
      prob: the problem that was solved.
      alg: the method used.
    """

    t: tf.Tensor
    u: tf.Tensor
    stats: dict
    status: tf.Tensor
    prob: Any = None
    alg: Any = None

    # tf.nest's custom-structure protocol: an ODESolution can be returned from
    # a tf.function; the problem and method travel as static metadata.
    def __tf_flatten__(self):
        return (self.prob, self.alg), (self.t, self.u, self.stats, self.status)

    @classmethod
    def __tf_unflatten__(cls, metadata, components):
        t, u, stats, status = components
        return cls(t=t, u=u, stats=stats, status=status, prob=metadata[0], alg=metadata[1])

    def summary(self) -> str:
        """A short multi-line description (eager mode)."""
        stats = ", ".join(f"{k}={int(v)}" for k, v in self.stats.items())
        alg = type(self.alg).__name__ if self.alg is not None else "?"
        return (
            f"ODESolution: {alg}, {self.t.shape[0]} save points, t in "
            f"[{float(self.t[0]):g}, {float(self.t[-1]):g}], u shape {tuple(self.u.shape[1:])}, "
            f"dtype {self.u.dtype.name}\n  status: {int(self.status)} ({self.message})\n  stats: {stats}"
        )


@dataclasses.dataclass(frozen=True)
class NonlinearSolution(_HasStatus):
    """The result of `sensode.solve` on a `NonlinearProblem` or `SteadyStateProblem`.

    Attributes:
      u: the root, shaped like ``prob.u0`` (``[*batch, n]``). Differentiable
        with respect to ``p`` (and variables read by ``f``) by the implicit
        adjoint; its gradient with respect to ``u0`` is zero.
      resid_norm: ``[*batch]`` max-norm of ``f(u)`` per system.
      iterations: scalar ``int32`` tensor (Newton / Anderson iterations, or
        `DynamicSS` integration windows).
      status: scalar ``int32`` tensor, 0 on success (see `Status`).
      prob: the problem that was solved.
      alg: the method used.
      du_dp: with ``sensealg=ForwardSensitivity()``, the sensitivities
        ``du/dp``: a nest like ``p`` whose leaf for a parameter of shape ``P``
        has shape ``[*u.shape, *P]``; otherwise None. Not differentiable.
    """

    u: tf.Tensor
    resid_norm: tf.Tensor
    iterations: tf.Tensor
    status: tf.Tensor
    prob: Any = None
    alg: Any = None
    du_dp: Any = None

    # Returnable from a tf.function, like ODESolution.
    def __tf_flatten__(self):
        return (self.prob, self.alg), (self.u, self.resid_norm, self.iterations, self.status, self.du_dp)

    @classmethod
    def __tf_unflatten__(cls, metadata, components):
        u, resid_norm, iterations, status, du_dp = components
        return cls(u=u, resid_norm=resid_norm, iterations=iterations, status=status, prob=metadata[0],
                   alg=metadata[1], du_dp=du_dp)

    def summary(self) -> str:
        """A short multi-line description (eager mode)."""
        alg = type(self.alg).__name__ if self.alg is not None else "?"
        return (
            f"NonlinearSolution: {alg}, u shape {tuple(self.u.shape)}, dtype {self.u.dtype.name}\n"
            f"  status: {int(self.status)} ({self.message})\n"
            f"  iterations: {int(self.iterations)}, max residual: {float(tf.reduce_max(self.resid_norm)):.3g}"
        )

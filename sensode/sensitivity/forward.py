"""Forward sensitivities: ``S = du/dθ`` integrated alongside the state.

``dS/dt = (df/du) S + df/dθ`` for all directions θ at once (``u0`` entries,
then the floating leaves of ``p``, then the variables ``f`` reads), using a
batch of Jacobian--vector products per stage. The sensitivities take part in
step-size control, so they are as accurate as the state.

When to use: few parameters and states (``len(u0) + len(p)`` up to about a
hundred); cost grows linearly with that number, memory does not grow with the
number of steps. Caution: the tangent batch is ``[M, *u.shape]`` with ``M``
the total number of directions; for a neural ODE with thousands of weights use
an adjoint instead.

References: Dickinson & Gelinas, J. Comput. Phys. 21, 1976; Rackauckas et al.,
"A comparison of automatic differentiation and continuous sensitivity
analysis for derivatives of differential equation solutions", 2018.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import tensorflow as tf

from ..derivatives import batched_jvp, batched_jvp_derivative, batched_jvp_time_derivative, traced_once
from ..ode.linear import SensitivitySystem
from ..params import Params
from .base import ForwardPass, Gradients, SensitivityAlgorithm

__all__ = ["ForwardSensitivity", "Directions", "directions", "forward_solve", "split_directions"]

# The sensitivities take part in error control, so the augmented solve takes
# more steps than the plain one (about 1.5x on Lotka--Volterra); its loop
# bound is this multiple of ``max_steps``. A loop bound costs nothing unless
# buffers are sized by it, and this solve records none.
STEP_BUDGET_FACTOR = 2


@dataclasses.dataclass(frozen=True)
class ForwardSensitivity(SensitivityAlgorithm):
    """Forward sensitivities: ``S = du/dp`` integrated with the state.

    For ODEs, ``dS/dt = (df/du) S + df/dp`` is solved alongside ``u`` with all
    tangent directions at once; for ``f(u, p) = 0`` it is one linear solve
    ``(df/du) S = -df/dp``.

    When to use: few parameters (roughly ``len(u0) + len(p) < 100``); cost
    grows linearly with that number, memory does not grow with the number of
    steps. Caution: the tangent batch is ``[M, *u.shape]``; for a neural ODE
    with thousands of weights use an adjoint. The augmented solve may take up
    to ``2 * max_steps`` steps (its error control includes the sensitivities).
    """

    def forward(self, spec, u0, ts, t0, t1, p, variables) -> ForwardPass:
        res, dirs = forward_solve(spec, u0, ts, t0, t1, p, variables)
        u_saved, s_saved = res.ys
        return ForwardPass(u_saved, res.stats, res.status, (s_saved, dirs))

    def backward(self, spec, u0, ts, t0, t1, p, variables, aux, g_u) -> Gradients:
        s_saved, dirs = aux  # [T, M, *u.shape]
        axes = list(range(2, s_saved.shape.rank))
        g = tf.reduce_sum(s_saved * g_u[:, None], axis=[0] + axes)  # [M]
        du0, dp, dv = split_directions(g, dirs, u0, p, variables)
        return Gradients(du0, dp, dv)


class Directions(NamedTuple):
    """Layout of the tangent directions: ``u0`` entries, differentiable leaves of ``p``, variables."""

    n_u0: int
    p_sizes: list  # sizes of the differentiable leaves of p
    v_sizes: list
    total: int


def directions(u0, p, variables) -> Directions:
    p_sizes = Params(p).sizes
    v_sizes = [int(v.shape.num_elements()) for v in variables]
    n_u0 = int(u0.shape.num_elements())
    return Directions(n_u0, p_sizes, v_sizes, n_u0 + sum(p_sizes) + sum(v_sizes))


def forward_solve(spec, u0, ts, t0, t1, p, variables):
    """Integrate ``(u, S)``; returns the integrate result and the `Directions`."""
    dtype = u0.dtype
    dirs = directions(u0, p, variables)
    eye = tf.eye(dirs.total, dtype=dtype)
    offset = 0

    def unit_block(size, shape):
        # Direction j of this block is the j-th unit vector of the leaf.
        nonlocal offset
        block = tf.reshape(eye[:, offset : offset + size], [dirs.total] + list(shape))
        offset += size
        return block

    s0 = unit_block(dirs.n_u0, u0.shape)
    p_tan = [unit_block(size, x.shape) for size, x in zip(dirs.p_sizes, Params(p).float_leaves)]
    v_tan = [unit_block(size, v.shape) for size, v in zip(dirs.v_sizes, variables)]

    def rhs(t, y):
        u, s = y
        return batched_jvp(spec.f, t, u, p, variables, s, p_tan, v_tan)

    fn = traced_once(rhs)
    if spec.method.stiff:
        # The stiff methods solve with the state's own factorised matrix
        # (block lower-triangular augmented Jacobian), not an augmented LU.
        state_jac = None if spec.jac is None else (lambda t, u: spec.jac(t, u, p))
        fn = SensitivitySystem(fn, lambda t, u: spec.f(t, u, p), state_jac,
                               traced_once(lambda t, u, s, x: batched_jvp_derivative(spec.f, t, u, p, variables, s,
                                                                                      p_tan, v_tan, x)),
                               traced_once(lambda t, u, s: batched_jvp_time_derivative(spec.f, t, u, p, variables, s,
                                                                                       p_tan, v_tan)))
    max_steps = STEP_BUDGET_FACTOR * spec.options.max_steps
    res = spec.integrate(fn, (u0, s0), t0, t1, saveat=ts, max_steps=max_steps)
    return res, dirs


def split_directions(x, dirs: Directions, u0, p, variables):
    """Split a ``[M, ...]`` gradient over directions into (u0, p leaves, variables)."""
    sizes = [dirs.n_u0] + dirs.p_sizes + dirs.v_sizes
    parts = tf.split(x, sizes, axis=0)
    du0 = tf.reshape(parts[0], tf.shape(u0))
    leaves = Params(p).float_leaves
    dp = [tf.reshape(g, tf.shape(leaf)) for g, leaf in zip(parts[1 : 1 + len(leaves)], leaves)]
    dv = [tf.reshape(g, v.shape) for g, v in zip(parts[1 + len(leaves) :], variables)]
    return du0, dp, dv

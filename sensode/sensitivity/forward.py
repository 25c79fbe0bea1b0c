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

from typing import NamedTuple

import tensorflow as tf

from ..derivatives import batched_jvp, graph_if_eager, p_leaves

__all__ = ["ForwardSensitivityMethod", "directions", "forward_solve"]


class _Dirs(NamedTuple):
    n_u0: int
    p_sizes: list  # sizes of the floating leaves of p (0 for other leaves)
    v_sizes: list
    total: int


def directions(u0, p, variables) -> _Dirs:
    leaves = p_leaves(p)
    p_sizes = [
        int(x.shape.num_elements()) if (tf.is_tensor(x) or isinstance(x, tf.Variable)) and x.dtype.is_floating else 0
        for x in leaves
    ]
    v_sizes = [int(v.shape.num_elements()) for v in variables]
    n_u0 = int(u0.shape.num_elements())
    return _Dirs(n_u0, p_sizes, v_sizes, n_u0 + sum(p_sizes) + sum(v_sizes))


def forward_solve(spec, u0, ts, t0, t1, p, variables):
    """Integrate ``(u, S)``; returns the integrate result and the direction layout."""
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
    p_tan = [
        unit_block(size, x.shape) if size else tf.zeros([dirs.total] + x.shape.as_list(), x.dtype)
        for size, x in zip(dirs.p_sizes, p_leaves(p))
    ]
    v_tan = [unit_block(size, v.shape) for size, v in zip(dirs.v_sizes, variables)]

    @graph_if_eager
    def rhs(t, y):
        u, s = y
        return batched_jvp(spec.f, t, u, p, variables, s, p_tan, v_tan)

    res = spec.integrate(rhs, (u0, s0), t0, t1, saveat=ts)
    return res, dirs


def split_directions(x, dirs: _Dirs, u0, p, variables):
    """Split a ``[M, ...]`` gradient over directions into (u0, p leaves, variables)."""
    sizes = [dirs.n_u0] + dirs.p_sizes + dirs.v_sizes
    parts = tf.split(x, sizes, axis=0)
    du0 = tf.reshape(parts[0], tf.shape(u0))
    leaves = p_leaves(p)
    dp = [tf.reshape(g, tf.shape(leaf)) if s else None for g, s, leaf in zip(parts[1 : 1 + len(leaves)], dirs.p_sizes, leaves)]
    dv = [tf.reshape(g, v.shape) for g, v in zip(parts[1 + len(leaves) :], variables)]
    return du0, dp, dv


class ForwardSensitivityMethod:
    """`forward` / `backward` pair for `sensitivity.differentiable`."""

    @staticmethod
    def forward(spec, u0, ts, t0, t1, p, variables):
        res, dirs = forward_solve(spec, u0, ts, t0, t1, p, variables)
        u_saved, s_saved = res.ys
        return u_saved, res.stats, res.status, (s_saved, dirs)

    @staticmethod
    def backward(spec, u0, ts, t0, t1, p, variables, aux, g_u):
        s_saved, dirs = aux  # [T, M, *u.shape]
        axes = list(range(2, s_saved.shape.rank))
        g = tf.reduce_sum(s_saved * g_u[:, None], axis=[0] + axes)  # [M]
        du0, dp, dv = split_directions(g, dirs, u0, p, variables)
        return du0, None, None, dp, dv

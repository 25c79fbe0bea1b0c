"""Linear algebra for the stiff methods: a flat view of the state, its
Jacobian, and a factorised ``M = I / (gamma h) - J`` whose solves are
differentiable by their own adjoint.

The loop hands methods a *flat list* of leaves. A stiff method needs one
vector: `Layout` concatenates the leaves (``[N]``, ``N`` the total number of
elements, batch dimensions included: a batched state ``[B, n]`` is one
``B n`` system, as for explicit methods, whose Jacobian happens to be block
diagonal).

`Factorised.solve` is a `tf.custom_gradient`: the gradient of
``x = M^{-1} b`` is one transposed solve with the same factors,
``b_bar = M^{-T} x_bar`` and ``M_bar = -b_bar x^T``, so the discrete adjoint
(reverse mode through the loop) never backpropagates through the LU
factorisation's internals (pivoting, a data-dependent loop under XLA).

References: Giles, "An extended collection of matrix derivative results for
forward and reverse mode automatic differentiation", 2008 (the adjoint of a
linear solve).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable

import numpy as np
import tensorflow as tf

from .. import tfcompat
from ..derivatives import jvp_by_two_vjps
from ..nonlinear.linsolve import LU, BlockDiagonalLU

# Reverse mode through the Jacobian's JVPs under XLA (the discrete adjoint) can need a third derivative of an `f`
# that concatenates (`tfcompat.register_missing_gradients`).
tfcompat.register_missing_gradients()

__all__ = ["Layout", "jacobian", "block_jacobian", "factorise", "BlockFactorised", "differentiated_jacobians", "time_derivative", "jvp", "WithJacobian", "SensitivitySystem", "Factorised",
           "SensitivityFactorised", "nan_if_failed", "UNROLL_UNDER_XLA", "INVERSE_UP_TO_UNDER_XLA"]

# Under XLA, a discrete adjoint differentiates the Jacobian itself, and the
# gradient of TF's vectorised (pfor) Jacobian has dynamic transposes that XLA
# cannot compile. Up to this many states the Jacobian is instead built from
# unrolled forward-mode JVPs (one per column), which compile either way.
UNROLL_UNDER_XLA = 48
# Under XLA, up to this size `Factorised` forms M^{-1} once (Gauss--Jordan,
# `LU.inverse`) and applies it by matrix products. XLA expands each
# triangular solve into a loop that inverts the factor's diagonal blocks
# again on every call: a Rodas5 step on Robertson x 10 (N = 30) made 16 such
# loops and took 0.31 ms, against 0.13 ms with the inverse. Tried above it:
# the inverse from the LU factors (one substitution with N right-hand sides),
# applied by products: a Rodas5 solve of Robertson x 100 (N = 300) went from
# 9.7 to 15.2 s (2 December, load 3-4).
INVERSE_UP_TO_UNDER_XLA = 64


class Layout:
    """Concatenate a flat list of leaves into one vector ``[N]`` and back.

    Needs static leaf shapes (the Jacobian and its factorisation are ``[N, N]``).
    """

    def __init__(self, leaves: list, who: str = "a stiff method"):
        shapes = [y.shape for y in leaves]
        for s in shapes:
            if not s.is_fully_defined():
                raise ValueError(
                    f"{who} needs a state of static shape (it forms an [N, N] Jacobian); got a leaf of shape {s}"
                )
        self.shapes = [s.as_list() for s in shapes]
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in self.shapes]
        self.size = sum(self.sizes)

    def vec(self, leaves: list):
        if len(leaves) == 1:
            return tf.reshape(leaves[0], [-1])
        return tf.concat([tf.reshape(x, [-1]) for x in leaves], axis=0)

    def unvec(self, v) -> list:
        if len(self.sizes) == 1:
            return [tf.reshape(v, self.shapes[0])]
        parts = tf.split(v, self.sizes, axis=-1)
        return [tf.reshape(x, s) for x, s in zip(parts, self.shapes)]

    def unvec_rows(self, rows) -> list:
        """``[R, N]`` -> one ``[R, *leaf]`` tensor per leaf."""
        r = rows.shape[0]
        if len(self.sizes) == 1:
            return [tf.reshape(rows, [r] + self.shapes[0])]
        parts = tf.split(rows, self.sizes, axis=-1)
        return [tf.reshape(x, [r] + s) for x, s in zip(parts, self.shapes)]


_DIFFERENTIATED = threading.local()


@contextlib.contextmanager
def differentiated_jacobians():
    """Within: `jacobian` builds Jacobians whose reverse mode compiles under XLA at any size.

    The discrete adjoint re-runs its steps under a tape inside this context
    (reverse mode through each step's Jacobian: second derivatives of ``f``).
    Elsewhere, above `UNROLL_UNDER_XLA` states, the cheaper-to-compile
    vectorised Jacobian is used.
    """
    before = getattr(_DIFFERENTIATED, "on", False)
    _DIFFERENTIATED.on = True
    try:
        yield
    finally:
        _DIFFERENTIATED.on = before


def jacobian(fn_vec: Callable, t, y, with_t: bool = True):
    """``(J, df/dt)`` of ``fn_vec(t, y) -> [N]`` at ``(t, y)`` (``y`` ``[N]``).

    One vectorised (``pfor``) Jacobian of ``f`` with respect to ``y`` and
    ``t`` together: a non-autonomous problem costs one extra tangent, not
    another pass. Recorded by any outer tape, so a
    discrete adjoint differentiates through ``J`` (second derivatives of f).
    Returns ``J`` ``[N, N]`` and ``df/dt`` ``[N]`` (None without ``with_t``).
    """
    # Eagerly, pfor re-traces a graph on every call (seconds per step); a
    # loop of reverse passes is far cheaper there. In graphs, pfor.
    pfor = not tf.executing_eagerly()
    n = y.shape[0]
    if pfor and tfcompat.in_xla_context(tf.compat.v1.get_default_graph()):
        if n <= UNROLL_UNDER_XLA:
            return _jacobian_unrolled(fn_vec, t, y, with_t)
        if getattr(_DIFFERENTIATED, "on", False):
            return _jacobian_chunked(fn_vec, t, y, with_t)
    if not with_t:
        with tf.GradientTape(watch_accessed_variables=False, persistent=not pfor) as tape:
            tape.watch(y)
            out = fn_vec(t, y)
        jac = tape.jacobian(out, y, experimental_use_pfor=pfor, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return jac, None
    # Two sources rather than one concatenated [y, t]: slicing the
    # concatenation back apart puts StridedSlice gradients with dynamic
    # bounds into the second-order graph, which XLA cannot compile.
    with tf.GradientTape(watch_accessed_variables=False, persistent=not pfor) as tape:
        tape.watch([y, t])
        out = fn_vec(t, y)
    jac, dfdt = tape.jacobian(out, [y, t], experimental_use_pfor=pfor,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return jac, dfdt


def jvp(fn: Callable, primal, tangent, recorded: bool | None = None):
    """``d fn(primal) / d primal . tangent``: one forward-mode product.

    ``recorded``: a tape will differentiate the product (the discrete
    adjoint's backward pass; default: inside `differentiated_jacobians`).
    Under XLA it is then the VJP of a VJP, two reverse passes built in this
    graph. The forward-mode accumulator wraps each op's JVP in a function
    call, and the gradient of such a call inside a loop receives the op's
    shape arguments as run-time values, which XLA rejects ("must be a
    compile-time constant"): a slice's bounds, and the tile multiples of any
    broadcast of a tangent-carrying value (``sin(w t) * u`` for the
    ``t``-tangent, ``u + sum(u)``, ``u[0:1] * u``). The two reverse passes
    compile to the same products.
    """
    zero = tf.UnconnectedGradients.ZERO
    if recorded is None:
        recorded = getattr(_DIFFERENTIATED, "on", False)
    if recorded and not tf.executing_eagerly() and tfcompat.in_xla_context(tf.compat.v1.get_default_graph()):
        return jvp_by_two_vjps(lambda: fn(primal), [primal], [tangent])
    with tf.autodiff.ForwardAccumulator(primal, tangent) as acc:
        out = fn(primal)
    return acc.jvp(out, unconnected_gradients=zero)


def time_derivative(fn_vec: Callable, t, y):
    """``df/dt`` of ``fn_vec(t, y) -> [N]`` at ``(t, y)``: one forward-mode tangent in ``t`` (`jvp`)."""
    return jvp(lambda s: fn_vec(s, y), t, tf.ones_like(t))


class WithJacobian:
    """A right-hand side ``fn(t, y)`` that also supplies its Jacobian ``jac(t, y) -> [N, N]``.

    ``y`` is whatever ``fn`` takes (a tensor, or the loop's flat list of
    leaves); ``N`` is its total number of elements, the leaves flattened in
    row-major order and concatenated (`Layout`). The loop keeps the wrapper
    around its flat view of ``fn``, and the stiff methods use ``jac`` for
    their Newton / W matrix instead of differentiating ``fn``. It is only a
    matrix for the linear algebra: ``fn`` alone defines the ODE.
    """

    def __init__(self, fn: Callable, jac: Callable):
        self.fn = fn
        self.jac = jac

    def __call__(self, t, y):
        return self.fn(t, y)


def _jacobian_unrolled(fn_vec, t, y, with_t):
    """``n`` (+1) forward-mode JVPs with unit tangents, unrolled in the graph."""
    n = y.shape[0]
    cols = _jvps_unrolled(fn_vec, t, y, lambda j: tf.one_hot(j, n, dtype=y.dtype), n)
    return tf.transpose(cols), (time_derivative(fn_vec, t, y) if with_t else None)


def _jacobian_chunked(fn_vec, t, y, with_t):
    """The forward-mode JVPs of `_jacobian_unrolled` in a `tf.while_loop`, `UNROLL_UNDER_XLA` columns per iteration.

    For ``n > UNROLL_UNDER_XLA`` under XLA inside `differentiated_jacobians`
    (the discrete adjoint's backward pass): the gradient of pfor's Jacobian does not
    compile there for an ``f`` that slices its state (``u[..., i]``: pfor's
    StridedSliceGrad takes run-time bounds), and unrolling ``n`` JVPs would
    trace ``f`` ``n`` times.
    """
    n = y.shape[0]
    cols = _jvps_chunked(fn_vec, t, y, lambda j: tf.one_hot(j, n, dtype=y.dtype), n)
    return tf.transpose(cols), (time_derivative(fn_vec, t, y) if with_t else None)


def _jvps_unrolled(fn_vec, t, y, tangent: Callable, count: int):
    """``[count, N]``: row ``j`` is ``J tangent(j)``, one forward-mode pass each, unrolled in the graph."""
    rows = [jvp(lambda x: fn_vec(t, x), y, tangent(j)) for j in range(count)]
    return tf.stack(rows, axis=0)


def _jvps_chunked(fn_vec, t, y, tangent: Callable, count: int):
    """`_jvps_unrolled` in a `tf.while_loop`, at most `UNROLL_UNDER_XLA` products per iteration.

    ``tangent`` takes a scalar int32 tensor; indices past ``count`` (the
    last chunk's padding) are computed and dropped.
    """
    n = y.shape[0]
    chunks = -(-count // UNROLL_UNDER_XLA)
    width = -(-count // chunks)  # products per iteration

    def body(c, rows_all):
        first = c * width
        block = _jvps_unrolled(fn_vec, t, y, lambda i: tangent(first + i), width)
        rows = (first + tf.range(width))[:, None]
        return c + 1, tf.tensor_scatter_nd_update(rows_all, rows, block)

    rows0 = tf.zeros([chunks * width, n], y.dtype)
    _, rows_all = tf.while_loop(lambda c, r: c < chunks, body, (tf.constant(0), rows0), maximum_iterations=chunks)
    return rows_all[:count]


def block_jacobian(fn_vec: Callable, t, y, block_size: int, with_t: bool = True):
    """``(J_blocks, df/dt)`` of ``fn_vec(t, y) -> [N]`` whose Jacobian is block diagonal.

    ``J`` is assumed block diagonal with square blocks of ``block_size``
    consecutive elements (``N = nb * block_size``). Column ``c`` of every
    block is read from one forward-mode product with the tangent that is 1 at
    positions ``c, c + b, c + 2 b, ...`` (a colouring of the columns: no two
    columns of one colour share a row), so ``J`` costs ``block_size``
    products of ``f``, not ``N``. Entries outside the blocks are not
    computed (they would be summed into the blocks' entries: the user's
    declaration of the structure must be right).

    Returns ``J_blocks`` ``[nb, b, b]`` (``J_blocks[k, r, c] = J[k b + r, k b + c]``)
    and ``df/dt`` ``[N]`` (None without ``with_t``).
    """
    n, b = y.shape[0], block_size
    nb = n // b

    def tangent(c):
        return tf.tile(tf.one_hot(c, b, dtype=y.dtype), [nb])

    in_graph = not tf.executing_eagerly()
    if in_graph and b > UNROLL_UNDER_XLA:
        rows = _jvps_chunked(fn_vec, t, y, tangent, b)
    else:
        rows = _jvps_unrolled(fn_vec, t, y, tangent, b)
    # rows[c, k b + r] = J[k b + r, k b + c]
    blocks = tf.transpose(tf.reshape(rows, [b, nb, b]), [1, 2, 0])
    return blocks, (time_derivative(fn_vec, t, y) if with_t else None)


def factorise(g: Callable, t, yv, inv_gh, *, block_size: int | None = None, jac=None, with_t: bool = True):
    """``(w, df/dt)``: ``M = I / (gamma h) - J`` of ``g(t, yv) -> [N]`` at ``(t, yv)``, factorised.

    ``jac``: the problem's Jacobian at ``(t, yv)`` (``[N, N]``; with
    ``block_size`` only its diagonal blocks are read); None: automatic
    differentiation of ``g`` (`jacobian`, or `block_jacobian` with
    ``block_size``, whose ``M`` is `BlockFactorised`). ``df/dt`` ``[N]`` when
    ``with_t`` (else None).
    """
    n = yv.shape[0]
    structure = None if block_size is None else BlockDiagonalLU(block_size)
    if structure is not None:
        structure.check_size(n, f"linsolve=BlockDiagonalLU({block_size}) (the state, batch included)")
    if jac is None:
        if block_size is None:
            jac, dt = jacobian(g, t, yv, with_t=with_t)
            return Factorised(jac, inv_gh), dt
        blocks, dt = block_jacobian(g, t, yv, block_size, with_t=with_t)
        return BlockFactorised(blocks, inv_gh), dt
    if jac.shape != (n, n):
        raise ValueError(f"`jac` must give a [{n}, {n}] matrix here, got {jac.shape}")
    dt = time_derivative(g, t, yv) if with_t else None
    if block_size is None:
        return Factorised(jac, inv_gh), dt
    return BlockFactorised(structure.blocks(jac), inv_gh), dt


class Factorised:
    """``M = I / (gamma h) - J`` factorised once (dense LU), solved many times.

    Args:
      jac: ``[N, N]`` Jacobian.
      inv_gh: scalar ``1 / (gamma h)``.

    The factorisation is `sensode.linsolve.LU` (partial pivoting, an XLA
    path) without its condition estimate; under XLA, up to
    `INVERSE_UP_TO_UNDER_XLA` states, it is the explicit inverse from
    `LU.inverse` (same pivots), applied by matrix products. An exactly singular ``M`` (a pivot
    at the level of rounding) or a non-finite one fails the step, so the
    loop rejects it and shrinks ``h``; a merely ill-conditioned one gives a
    large stage, which the error estimate rejects the same way (as in
    Hairer's RODAS and RADAU5, which test pivots only).

    Failures. A failed solve (singular ``M``, or a non-finite solution)
    returns zeros where its solution is not finite and is recorded:
    `mark_failed` then makes the step's proposal NaN at the very end, and
    `solve_checked`'s flag tells a Newton iteration to stop. Every value the discrete
    adjoint differentiates stays finite, so the zero cotangent of a rejected
    step stays zero (``0 * NaN`` would make a successful solve's gradient NaN).
    """

    def __init__(self, jac, inv_gh):
        n = jac.shape[-1]
        self.m = inv_gh * tf.eye(n, dtype=jac.dtype) - jac
        # Stopped on the way out too: a Newton loop that captures the factors
        # would otherwise ask for the (undefined) gradient of the Lu op. No
        # condition estimate: under XLA it cost 80% of a HIRES solve.
        m = tf.stop_gradient(self.m)
        if n <= INVERSE_UP_TO_UNDER_XLA and tfcompat.in_xla_context(tf.compat.v1.get_default_graph()):
            self.factors = None
            inverse, singular = LU().inverse(m)
            self.inverse, self.singular = tf.stop_gradient(inverse), tf.stop_gradient(singular)
        else:
            factors = LU().factor(m[None], estimate_condition=False)
            self.factors = tf.nest.map_structure(tf.stop_gradient, factors)
            self.inverse, self.singular = None, self.factors.singular[0]
        self.blocked = None
        if self.factors is not None and tfcompat.in_xla_context(tf.compat.v1.get_default_graph()):
            self.blocked = _BlockedSubstitution(self.factors.lu[0], self.factors.perm[0], self.singular)
        self.flags: list = []  # one bool per recorded solve: it failed

    def mark_failed(self, values: list) -> list:
        """``values``, NaN if a solve of this step failed (`nan_if_failed`)."""
        return nan_if_failed(self.flags, values)

    def solve(self, b):
        """``M^{-1} b`` for ``b`` ``[N]`` or ``[N, K]`` (``K`` right-hand sides at once).

        Differentiable in ``M`` and ``b`` by the adjoint solve. A failed solve
        is recorded for `mark_failed` (see the class).
        """
        x, ok, _ = self.solve_checked(b)
        self.flags.append(~ok)
        return x

    def solve_checked(self, b):
        """``(x, ok, 0)``: `solve` without recording (safe inside loops); ``x`` is finite.

        The third entry (iterations) matches `MatrixFree.solve_checked`.
        """
        raw = []

        @tf.custom_gradient
        def run(m, rhs):
            x = self._apply(rhs, transpose=False)
            raw.append(x)
            x = tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))

            def grad(gx):
                gb = self._apply(gx, transpose=True)
                # A rejected step's zero cotangent stays zero even where M was
                # singular (its solution NaN): 0 * NaN would be NaN.
                gb = tf.where(tf.math.is_finite(gb), gb, tf.zeros_like(gb))
                xs = tf.stop_gradient(x)  # finite (zeros where the solve failed)
                return self._m_cotangent(gb, xs), gb

            return x, grad

        x = run(self.m, b)
        ok = ~self.singular & tf.reduce_all(tf.math.is_finite(raw[0]))
        return x, ok, tf.constant(0, tf.int32)

    @staticmethod
    def _m_cotangent(gb, xs):
        """``M_bar = -b_bar x^T`` (summed over right-hand sides)."""
        if gb.shape.rank == 1:
            return -gb[:, None] * xs[None, :]
        return -tf.matmul(gb, xs, transpose_b=True)

    def _apply(self, b, transpose):
        """``M^{-1} b`` (``M^{-T} b``) for ``b`` ``[N]`` or ``[N, K]``; NaN where ``M`` is singular."""
        if self.blocked is not None:
            return self.blocked.solve(b, transpose)
        if self.inverse is None:
            return LU().solve_factored(self.factors, b[None], transpose=transpose).x[0]
        if b.shape.rank == 1:
            return tf.linalg.matvec(self.inverse, b, transpose_a=transpose)
        return tf.matmul(self.inverse, b, transpose_a=transpose)


class BlockFactorised(Factorised):
    """`Factorised` for a block-diagonal ``J`` (`sensode.linsolve.BlockDiagonalLU`): ``nb`` small LUs.

    Args:
      blocks: ``[nb, b, b]`` diagonal blocks of the Jacobian (`block_jacobian`).
      inv_gh: scalar ``1 / (gamma h)``.

    ``M``'s blocks are factored together (`LU`, partial pivoting, the same
    pivot test); up to `INVERSE_UP_TO_UNDER_XLA` their inverses are formed
    once (one substitution with ``b`` right-hand sides) and every solve is a
    batched matrix-vector product, in every execution mode. One singular
    block fails the whole solve (as a singular ``M`` does). Solves,
    failures and gradients (``M_bar`` has the blocks' shape) as `Factorised`.
    """

    def __init__(self, blocks, inv_gh):
        nb, b = blocks.shape[0], blocks.shape[-1]
        self.nb, self.b = nb, b
        self.m = inv_gh * tf.eye(b, batch_shape=[1], dtype=blocks.dtype) - blocks
        lu = LU()
        factors = tf.nest.map_structure(tf.stop_gradient, lu.factor(tf.stop_gradient(self.m), estimate_condition=False))
        self.singular = tf.reduce_any(factors.singular)
        if b <= INVERSE_UP_TO_UNDER_XLA:
            eye = tf.eye(b, batch_shape=[nb], dtype=blocks.dtype)
            self.factors, self.inverse = None, tf.stop_gradient(lu.solve_factored(factors, eye).x)  # NaN if singular
        else:
            self.factors, self.inverse = factors, None
        self.flags = []

    def _m_cotangent(self, gb, xs):
        """The blocks of ``-b_bar x^T``: ``[nb, b, b]``."""
        if gb.shape.rank == 1:
            gb, xs = tf.reshape(gb, [self.nb, self.b, 1]), tf.reshape(xs, [self.nb, self.b, 1])
        else:
            k = gb.shape[-1]
            gb, xs = tf.reshape(gb, [self.nb, self.b, k]), tf.reshape(xs, [self.nb, self.b, k])
        return -tf.matmul(gb, xs, transpose_b=True)

    def _apply(self, b, transpose):
        vec = b.shape.rank == 1
        rhs = tf.reshape(b, [self.nb, self.b, 1 if vec else b.shape[-1]])
        if self.inverse is not None:
            x = tf.matmul(self.inverse, rhs, transpose_a=transpose)
        else:
            x = LU().solve_factored(self.factors, rhs, transpose=transpose).x
        return tf.reshape(x, tf.shape(b))


class _BlockedSubstitution:
    """Triangular solves with packed LU factors as products: the inverses of the diagonal blocks formed once.

    Under XLA each `tf.linalg.triangular_solve` is expanded into a loop that
    inverts the factor's diagonal blocks again on every call; a Rosenbrock
    step solves many times with one factorisation. Here the inverses of the
    ``BLOCK x BLOCK`` diagonal blocks of ``L`` and ``U`` are computed once per
    factorisation, and each solve is block forward / back substitution: two
    products per block (unrolled; ``N`` is static). NaN where ``singular``.
    """

    BLOCK = 32

    def __init__(self, lu, perm, singular):
        n = lu.shape[-1]
        self.n, self.perm, self.singular = n, perm, singular
        eye = tf.eye(n, dtype=lu.dtype)
        self.lower = tf.linalg.band_part(lu, -1, 0) - tf.linalg.diag(tf.linalg.diag_part(lu)) + eye
        self.upper = tf.linalg.band_part(lu, 0, -1)
        self.blocks = [(i, min(i + self.BLOCK, n)) for i in range(0, n, self.BLOCK)]
        self.inv_lower, self.inv_upper = [], []
        for i0, i1 in self.blocks:
            k = tf.eye(i1 - i0, dtype=lu.dtype)
            self.inv_lower.append(tf.linalg.triangular_solve(self.lower[i0:i1, i0:i1], k, lower=True))
            self.inv_upper.append(tf.linalg.triangular_solve(self.upper[i0:i1, i0:i1], k, lower=False))

    def solve(self, b, transpose: bool):
        vec = b.shape.rank == 1
        x = b[:, None] if vec else b
        blocks, lower, upper = self.blocks, self.lower, self.upper
        if not transpose:  # M[perm] = L U: L y = P b, then U x = y
            x = tf.gather(x, self.perm)
            y = []
            for j, (i0, i1) in enumerate(blocks):
                r = x[i0:i1] if j == 0 else x[i0:i1] - tf.matmul(lower[i0:i1, :i0], tf.concat(y, 0))
                y.append(tf.matmul(self.inv_lower[j], r))
            z = [None] * len(blocks)
            for j in reversed(range(len(blocks))):
                i0, i1 = blocks[j]
                r = y[j] if i1 == self.n else y[j] - tf.matmul(upper[i0:i1, i1:], tf.concat(z[j + 1:], 0))
                z[j] = tf.matmul(self.inv_upper[j], r)
            out = tf.concat(z, 0)
        else:  # M^T = U^T L^T P: U^T w = b, L^T v = w, x = P^T v
            w = []
            for j, (i0, i1) in enumerate(blocks):
                r = x[i0:i1] if j == 0 else x[i0:i1] - tf.matmul(upper[:i0, i0:i1], tf.concat(w, 0), transpose_a=True)
                w.append(tf.matmul(self.inv_upper[j], r, transpose_a=True))
            v = [None] * len(blocks)
            for j in reversed(range(len(blocks))):
                i0, i1 = blocks[j]
                r = w[j] if i1 == self.n else w[j] - tf.matmul(lower[i1:, i0:i1], tf.concat(v[j + 1:], 0), transpose_a=True)
                v[j] = tf.matmul(self.inv_lower[j], r, transpose_a=True)
            out = tf.gather(tf.concat(v, 0), tf.argsort(self.perm))
        out = tf.where(self.singular, tf.constant(np.nan, out.dtype), out)
        return out[:, 0] if vec else out


def nan_if_failed(flags: list, values: list) -> list:
    """``values`` plus NaN if any of ``flags`` (a step's failed solves) is True, else unchanged.

    Added as a constant at the very end of a step, so gradients pass through
    unchanged and everything the discrete adjoint differentiates stays finite.
    """
    if not flags:
        return values
    failed = tf.reduce_any(tf.stack(flags))
    return [v + tf.stop_gradient(tf.where(failed, tf.constant(np.nan, v.dtype), tf.zeros([], v.dtype)))
            for v in values]


class SensitivitySystem:
    """The forward-sensitivity system ``(u, S) -> (f(u), J(u) S + df/dθ)``, with its structure.

    ``fn(t, (u, S))`` is the augmented right-hand side (``u`` one tensor,
    ``S`` ``[M, *u.shape]``: one tangent direction per row); ``state_fn(t,
    u)`` is ``f`` alone and ``state_jac(t, u) -> [n, n]`` its Jacobian when
    the problem supplies one (else None: automatic differentiation of
    ``state_fn``); ``coupling(t, u, S, x) -> [M, *u.shape]`` applies the
    coupling block ``B = d(J S + df/dθ)/du`` to ``x`` (shaped like ``u``);
    ``time_derivative(t, u, S) -> (df/dt, d(J S + df/dθ)/dt)`` is the
    system's ``t``-derivative (`batched_jvp_time_derivative`; None: a
    forward-mode tangent in ``t`` through ``fn``).
    The stiff methods recognise it and solve with the augmented matrix ``I /
    (gamma h) - [[J, 0], [B, I_M (x) J]]`` through the state's own
    factorised ``n x n`` matrix (`SensitivityFactorised`), as CVODES does,
    instead of forming and factorising the ``n (M + 1)``-square augmented
    Jacobian.
    """

    def __init__(self, fn: Callable, state_fn: Callable, state_jac: Callable | None, coupling: Callable,
                 time_derivative: Callable | None = None):
        self.fn = fn
        self.state_fn = state_fn
        self.state_jac = state_jac
        self.coupling = coupling
        self.time_derivative = time_derivative

    def __call__(self, t, y):
        return self.fn(t, y)


class SensitivityFactorised:
    """Solves with ``I / (gamma h) - J_aug`` for a `SensitivitySystem`, from one ``n x n`` LU.

    ``J_aug = [[J, 0], [B, I_M (x) J]]`` is block lower triangular: ``J =
    df/du`` and ``B = d(J S + df/dθ)/du`` (second derivatives of ``f``), both
    at the step's start ``(t, u, S)``. A solve of ``[b_u, b_S]`` is ``x_u =
    M^{-1} b_u`` and then ``x_S = M^{-1} (b_S + B x_u)`` for all ``M``
    directions at once (``M`` right-hand sides of the same factors); ``B
    x_u`` is one vectorised second-order forward-mode product
    (``system.coupling``), so ``B`` is never formed. The result equals a
    dense solve with the augmented matrix (the method's order is kept: the
    Jacobian is exact).
    """

    def __init__(self, system: SensitivitySystem, layout: Layout, t, yv, inv_gh, block_size: int | None = None):
        n = layout.sizes[0]
        u_shape = layout.shapes[0]
        self.n, self.t, self.system, self.u_shape = n, t, system, u_shape
        u = tf.reshape(yv[:n], u_shape)
        self.u, self.s = u, tf.reshape(yv[n:], layout.shapes[1])
        jac = None if system.state_jac is None else system.state_jac(t, u)
        g = lambda t_, uv: tf.reshape(system.state_fn(t_, tf.reshape(uv, u_shape)), [-1])  # noqa: E731
        self.state, _ = factorise(g, t, yv[:n], inv_gh, block_size=block_size, jac=jac, with_t=False)

    def mark_failed(self, values: list) -> list:
        return self.state.mark_failed(values)

    def solve(self, b):
        x, ok, _ = self.solve_checked(b)
        self.state.flags.append(~ok)
        return x

    def solve_checked(self, b):
        """``(x, ok, 0)`` without recording (safe inside a Newton loop); see `Factorised`."""
        n = self.n
        x_u, ok_u, _ = self.state.solve_checked(b[:n])
        coupling = self.system.coupling(self.t, self.u, self.s, tf.reshape(x_u, self.u_shape))  # [M, *u]
        rhs = tf.transpose(tf.reshape(b[n:], [-1, n]) + tf.reshape(coupling, [-1, n]))  # [n, M]
        x_s, ok_s, _ = self.state.solve_checked(rhs)
        return tf.concat([x_u, tf.reshape(tf.transpose(x_s), [-1])], axis=0), ok_u & ok_s, tf.constant(0, tf.int32)

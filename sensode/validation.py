"""Input checks shared by the entry points.

Every check works on *static* information only (dtypes, shapes, and values
that are known while tracing); symbolic values inside `tf.function` are left to
the solver's status code. Each message names the offending argument.
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

__all__ = [
    "as_time",
    "check_p",
    "check_tolerance",
    "check_saveat",
    "check_max_steps",
    "checked_f",
    "checked_jac",
    "static_value",
]


def static_value(x):
    """The NumPy value of ``x`` if it is known now (eager or constant), else None."""
    if isinstance(x, tf.Variable):
        return x.numpy() if tf.executing_eagerly() else None
    if tf.is_tensor(x):
        return tf.get_static_value(x)
    try:
        return np.asarray(x)
    except Exception:  # pragma: no cover - exotic inputs
        return None


def _float_dtype_of(x):
    if tf.is_tensor(x) or isinstance(x, tf.Variable):
        return x.dtype
    if isinstance(x, np.ndarray):
        return tf.as_dtype(x.dtype)
    return None


def as_time(x, dtype, name: str):
    """Convert a time (``t0``, ``t1``, ``saveat``, ``dt``) to ``dtype``, refusing silent casts."""
    src = _float_dtype_of(x)
    if src is not None:
        if src.is_floating and src != dtype:
            raise TypeError(
                f"dtype mismatch: `{name}` has dtype {src.name} but `u0` has dtype {dtype.name}; "
                "use the same floating dtype for times and state"
            )
        if not (src.is_floating or src.is_integer):
            raise TypeError(f"`{name}` must be real, got dtype {src.name}")
        return tf.cast(x, dtype)
    if isinstance(x, bool) or not isinstance(x, (numbers.Real, list, tuple)):
        raise TypeError(f"`{name}` must be a real number or a floating tensor, got {type(x).__name__}")
    return tf.constant(x, dtype)


def check_p(p, dtype):
    """Every floating leaf of ``p`` must have the dtype of ``u0``."""
    for path, leaf in _leaves_with_path(p):
        src = _float_dtype_of(leaf)
        if src is not None and src.is_floating and src != dtype:
            raise TypeError(
                f"dtype mismatch: `p{path}` has dtype {src.name} but `u0` has dtype {dtype.name}"
            )


def _leaves_with_path(p, path=""):
    if p is None:
        return
    if isinstance(p, dict):
        for k in p:
            yield from _leaves_with_path(p[k], f"{path}[{k!r}]")
    elif isinstance(p, (list, tuple)):
        for i, v in enumerate(p):
            yield from _leaves_with_path(v, f"{path}[{i}]")
    else:
        yield path, p


def check_tolerance(value, name: str, dtype):
    if value is None:
        raise ValueError(f"`{name}` must be a positive number, got None")
    v = static_value(value)
    if v is not None and (np.any(~np.isfinite(v)) or np.any(np.asarray(v) <= 0)):
        raise ValueError(f"`{name}` must be positive and finite, got {v}")
    return to_dtype(value, dtype)


def to_dtype(value, dtype):
    """``value`` as a tensor of ``dtype``; Python and NumPy numbers converted exactly.

    ``tf.cast`` of a Python float goes through float32 first (``1e-9``
    becomes ``9.9999997e-10`` in a float64 solve).
    """
    if tf.is_tensor(value) or isinstance(value, tf.Variable):
        return tf.cast(value, dtype)
    return tf.constant(np.asarray(value, dtype.as_numpy_dtype))


def check_max_steps(max_steps):
    if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive Python int (a static loop bound), got {max_steps!r}")
    return int(max_steps)


def check_tspan(t0, t1):
    v0, v1 = static_value(t0), static_value(t1)
    if v0 is not None and v1 is not None:
        if not (np.isfinite(v0) and np.isfinite(v1)):
            raise ValueError(f"`tspan` must be finite, got ({v0}, {v1})")
        if v0 == v1:
            raise ValueError(f"`tspan` is empty: t0 == t1 == {v0}")


def check_saveat(saveat, t0, t1):
    """``saveat`` must be 1-D, inside ``[t0, t1]`` and monotone in that direction.

    Raises at once when the values are known now. Otherwise returns a
    boolean tensor that is True when the run-time values pass the same checks
    (the entry points turn False into `Status.INVALID_INPUT` and NaN);
    returns None when everything was checked here.
    """
    if saveat.shape.rank != 1:
        raise ValueError(f"`saveat` must be a 1-D tensor of times, got shape {saveat.shape}")
    if saveat.shape[0] == 0:
        raise ValueError("`saveat` must contain at least one time")
    ts, v0, v1 = static_value(saveat), static_value(t0), static_value(t1)
    if ts is None or v0 is None or v1 is None:
        direction = tf.where(t1 >= t0, tf.constant(1.0, saveat.dtype), tf.constant(-1.0, saveat.dtype))
        lo, hi = tf.minimum(t0, t1), tf.maximum(t0, t1)
        inside = tf.reduce_all((saveat >= lo) & (saveat <= hi))
        monotone = tf.reduce_all(direction * (saveat[1:] - saveat[:-1]) >= 0)
        return inside & monotone & tf.reduce_all(tf.math.is_finite(saveat))
    lo, hi = min(v0, v1), max(v0, v1)
    if not np.all(np.isfinite(ts)):
        raise ValueError("`saveat` must be finite")
    if np.any(ts < lo) or np.any(ts > hi):
        bad = ts[(ts < lo) | (ts > hi)]
        raise ValueError(f"`saveat` times must lie inside tspan [{v0}, {v1}]; outside: {bad[:5]}")
    steps = np.diff(ts) * (1.0 if v1 >= v0 else -1.0)
    if np.any(steps < 0):
        raise ValueError(
            "`saveat` must be monotone in the direction of integration "
            f"({'increasing' if v1 >= v0 else 'decreasing'})"
        )
    return None


def checked_f(f, u0, name="f"):
    """Wrap ``f(t, u, p)`` so that its output is checked (statically) on each trace."""
    shape, dtype = u0.shape, u0.dtype

    def rhs(t, u, p):
        out = f(t, u, p)
        if not (tf.is_tensor(out) or isinstance(out, (np.ndarray, list, tuple, numbers.Real))):
            raise TypeError(f"`{name}` must return a tensor shaped like `u`, got {type(out).__name__}")
        out = tf.convert_to_tensor(out)
        if out.dtype != dtype:
            raise TypeError(
                f"`{name}` returned dtype {out.dtype.name}, but the state `u` has dtype {dtype.name}"
            )
        if not out.shape.is_compatible_with(shape) or out.shape.rank != shape.rank:
            raise ValueError(
                f"`{name}` returned shape {out.shape}, but the state `u` has shape {shape}; "
                "du/dt must have the shape of u"
            )
        return out

    return rhs


def checked_jac(jac, u0):
    """Wrap ``jac(t, u, p)`` so that it returns the ``[N, N]`` Jacobian of the flattened state.

    ``N = u0.size``. Accepts ``[N, N]``, or for a state ``[*batch, n]`` of
    rank >= 2 the blocks ``[*batch, n, n]``, assembled into the block
    diagonal. Anything else raises (at trace time) a `ValueError` naming ``jac``.
    """
    shape, dtype = u0.shape, u0.dtype
    n_all = int(shape.num_elements())
    full = tf.TensorShape([n_all, n_all])
    blocks = shape.concatenate([shape[-1]]) if shape.rank >= 2 else None

    def jacobian(t, u, p):
        out = jac(t, u, p)
        if not (tf.is_tensor(out) or isinstance(out, (np.ndarray, list, tuple))):
            raise TypeError(f"`jac` must return a tensor (df/du), got {type(out).__name__}")
        out = tf.convert_to_tensor(out)
        if out.dtype != dtype:
            raise TypeError(f"`jac` returned dtype {out.dtype.name}, but the state `u` has dtype {dtype.name}")
        if out.shape == full:
            return out
        if blocks is not None and out.shape == blocks:
            n = int(shape[-1])
            b = n_all // n
            out = tf.reshape(out, [b, n, n])
            eye = tf.eye(b, dtype=dtype)
            # [b, n, b, n] with entry (i, r, j, c) = delta_ij out[i, r, c]: the block diagonal.
            return tf.reshape(eye[:, None, :, None] * out[:, :, None, :], [n_all, n_all])
        also = f" or the per-system blocks {blocks.as_list()}" if blocks is not None else ""
        raise ValueError(
            f"`jac` returned shape {out.shape}, but a state of shape {shape.as_list()} needs df/du of shape "
            f"{full.as_list()} (N = u.size, u flattened in row-major order){also}"
        )

    return jacobian

"""Support of the Keras layers: configs of sensode objects, option checks, failure exposure.

Kept apart from `sensode.frontends.keras` so that each module stays small; the
layers are the only users.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from .. import ExplicitRK, SolverError, Status, linsolve

# --- configs of sensode strategy objects -------------------------------------

def _known_classes() -> dict:
    """Public sensode classes (methods, sensealgs, linear solvers) by name."""
    import sensode  # the package itself: its public namespace, read without triggering lazy imports

    out = {}
    for namespace in (vars(sensode), vars(linsolve)):
        for obj in namespace.values():
            if isinstance(obj, type) and obj.__module__.startswith("sensode."):
                out[obj.__name__] = obj
    return out


def _encode(obj):
    """A JSON-able config of a sensode method / sensealg / linsolve object."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    cls = type(obj)
    if _known_classes().get(cls.__name__) is not cls:
        raise TypeError(f"cannot serialise {obj!r}: only sensode methods, sensealgs and linear solvers are supported")
    if dataclasses.is_dataclass(obj):
        fields = {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return {"class_name": cls.__name__, "config": fields}
    if cls is not ExplicitRK and not vars(obj):
        return {"class_name": cls.__name__, "config": {}}  # a named method: its data is the class's own
    raise TypeError(f"cannot serialise {obj!r}: use a named method such as sensode.Tsit5()")


def _decode(cfg):
    if not isinstance(cfg, dict):
        return cfg
    cls = _known_classes()[cfg["class_name"]]
    return cls(**{k: _decode(v) for k, v in cfg["config"].items()})


def _check_float(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and np.isfinite(value)):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return float(value)


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
    return int(value)


def _state_variable(layer, name):
    # Written by every replica; ONLY_FIRST_REPLICA makes that legal under
    # MirroredStrategy (any replica's count is as good as another's).
    return layer.add_weight(
        name=name, shape=(), dtype="int32", initializer="zeros", trainable=False, aggregation="only_first_replica"
    )


_ON_FAILURE = ("raise", "nan")


def _check_on_failure(value):
    if not isinstance(value, str) or value not in _ON_FAILURE:
        raise ValueError(f"`on_failure` must be 'raise' or 'nan', got {value!r}")
    return value


def _expose_failure(layer, inputs, out, status, what, hint):
    """Record ``status`` in ``layer.last_status``; raise or turn ``out`` to NaN if it is non-zero.

    Eager with ``on_failure="raise"``: `SolverError`. Otherwise (inside
    `tf.function`, ``model.fit``, XLA, where nothing can raise, or with
    ``on_failure="nan"``): the output and every gradient through it are NaN.
    """
    status = tf.cast(status, tf.int32)
    layer.last_status.assign(status)
    failed = tf.not_equal(status, Status.SUCCESS)
    if layer.on_failure == "raise" and tf.executing_eagerly() and bool(failed):
        code = int(status)
        name = Status(code).name if code in set(Status) else "UNKNOWN"
        raise SolverError(
            f"{type(layer).__name__} layer {layer.name!r}: {what} failed with status {code} ({name}); {hint}. "
            "Inside tf.function / model.fit the output is NaN and `last_status` holds the code; "
            "on_failure='nan' gives that in eager mode too",
            code,
        )
    # NaN is added, not selected: `tf.where(failed, nan, out)` would pass a
    # zero gradient back. The term `poison * sum(inputs and weights)` makes the
    # gradient to the inputs and every weight NaN as well, whatever the solve's
    # own backward pass returns for a failed solve and whatever cotangent the
    # layers after this one send back (a ReLU sends zeros at NaN). On success
    # poison is 0 and the output is unchanged, bit for bit.
    poison = tf.where(failed, tf.constant(np.nan, out.dtype), tf.zeros([], out.dtype))
    link = tf.add_n([tf.reduce_sum(tf.cast(v, out.dtype)) for v in [inputs, *layer.trainable_variables]])
    return out + poison * (1.0 + link)

"""Eager calls at compiled speed: one XLA-compiled function per call structure, cached.

Run op by op, a stepping loop costs ~100 µs of Python and dispatch per
operation (a Lotka--Volterra solve: 16 s eagerly, ~1 ms compiled). So the
entry points, called from eager code, trace the same call once into a
`tf.function(jit_compile=True)` and reuse it: the first call pays the XLA
compilation (seconds), later calls with the same *structure* run compiled.

The structure is everything the trace depends on: the right-hand side
object ``f`` itself (by identity), the method, the sensitivity algorithm
and the other static options, the shapes and dtypes of the tensor inputs,
and the values of non-tensor parameter leaves. Tensor values (``u0``, the
floating leaves of ``p``, times, tolerances) are arguments, so new values
reuse the compiled function and gradients flow to them as usual;
`tf.Variable`s that ``f`` reads are captured and differentiated as in any
`tf.function`.

Caution, as with ``jax.jit``: a right-hand side whose Python behaviour
changes between calls (it reads a Python global that changes) is traced
once; pass ``compile=False`` to run op by op (for debugging with prints
and breakpoints). At most `MAX_ENTRIES` structures are kept (least recently
used dropped).

A repeated call should cost what the compiled program costs. Validating the
inputs, building the full `signature` and `tf.function`'s argument binding
take ~0.8 ms of Python on Lotka--Volterra, twice the program itself. So a
second, cheaper key (`fast_call`) is built from Python identities, types and
shapes only, before any validation, for the plain inputs that cover nearly
every call (tensors of the state dtype, Python numbers, NumPy arrays; ``p``
``None``, a tensor, or a flat list / tuple / dict of tensors). Its entry
remembers the inputs that were validated by value (times, ``saveat``,
tolerances, step bounds): a call takes the fast path only when they are the
same objects (tensors) or equal values (numbers, arrays) -- so it is known to
be valid -- and then runs the traced `ConcreteFunction` on flat tensors.
Anything else goes through the full validation, which raises on bad input and
records the new values.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from . import tfcompat

__all__ = ["cached_function", "signature", "value_key", "fast_call", "Compiled", "FastCall", "MAX_ENTRIES"]

MAX_ENTRIES = 64
_CACHE: "collections.OrderedDict[Any, Compiled]" = collections.OrderedDict()
_FAST: "collections.OrderedDict[Any, _Entry]" = collections.OrderedDict()
# type(tf.constant(0.0)), set by the first `fast_call`: making a tensor at import
# would start TensorFlow's runtime, after which devices and TF_XLA_FLAGS are fixed.
_EAGER_TENSOR = None
# Numbers compared by value: Python's, and NumPy scalars (``np.logspace`` tolerances).
_NUMBERS = (float, int, np.float64, np.float32, np.int64, np.int32)
# Problem attributes that are inputs (tensors or validated values); every other
# attribute (``f``, and any field a problem class adds) is part of the key.
_PROBLEM_INPUTS = ("u0", "tspan", "p")


def _leaf_signature(x):
    if isinstance(x, tf.Variable):
        return ("variable", x.ref())
    if tf.is_tensor(x):
        if not x.dtype.is_floating and hasattr(x, "numpy"):  # a setting, not a differentiable input
            return ("tensor-value", x.dtype.name, tuple(x.shape.as_list()), x.numpy().tobytes())
        return ("tensor", x.dtype.name, tuple(x.shape.as_list()))
    if isinstance(x, np.ndarray):
        if x.dtype.kind == "f":  # a differentiable leaf (`Params`): an input of the function, like a tensor
            return ("tensor", tf.as_dtype(x.dtype).name, x.shape)
        return ("array", x.dtype.str, x.shape, x.tobytes())
    try:
        hash(x)
    except TypeError:
        return ("object", id(x))
    return ("value", type(x).__name__, x)


def value_key(x):
    """A hashable key of a setting that a traced function captures by value.

    Tensors and arrays by their bytes, numbers and strings as they are,
    lists / tuples element-wise, anything else (methods, sensitivity
    algorithms) by its ``repr``, which names its settings.
    """
    if isinstance(x, (list, tuple)):
        return tuple(value_key(v) for v in x)
    if tf.is_tensor(x) or isinstance(x, np.ndarray):
        a = np.asarray(x)
        return (a.dtype.str, a.shape, a.tobytes())
    if isinstance(x, (bool, int, float, str, type(None))):
        return (type(x).__name__, x)
    return repr(x)


def signature(*parts) -> tuple:
    """A hashable key of nests: tensors and floating arrays by dtype and shape, other leaves by value.

    Floating arrays are keyed like tensors because they are the differentiable
    leaves of ``p`` (`sensode.params.Params`), passed to the compiled function
    as arguments: keyed by value, every new NumPy parameter vector compiled
    again (1.2 s a call for Lotka--Volterra).

    Nests are flattened with their structure (dict keys included), so two
    parameter nests with the same shapes but different keys differ.
    """
    out = []
    for part in parts:
        leaves = tf.nest.flatten(part)
        try:
            structure = repr(tf.nest.map_structure(lambda _: 0, part))
        except (TypeError, ValueError):  # pragma: no cover - exotic nests
            structure = type(part).__name__
        out.append((structure, tuple(_leaf_signature(x) for x in leaves)))
    return tuple(out)


def problem_fields(prob) -> tuple:
    """The attributes of a problem other than its inputs (``f``, ...), for a key."""
    return tuple((k, v if _hashable(v) else ("object", id(v))) for k, v in vars(prob).items()
                 if k not in _PROBLEM_INPUTS)


def _plain_problem_fields(prob):
    """`problem_fields` when every field is hashable, else None (the full path)."""
    fields = tuple((k, v) for k, v in vars(prob).items() if k not in _PROBLEM_INPUTS)
    return fields if _hashable(fields) else None


def _hashable(x) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


class Compiled:
    """The XLA-compiled function of one call structure, called with a flat list of tensors.

    ``fn(*tensors)`` is traced once per list of shapes and dtypes
    (`get_concrete_function`) and the traced function is then called directly
    (`tfcompat.call_flat`), without `tf.function`'s per-call argument binding.
    """

    def __init__(self, fn: Callable):
        self.function = tf.function(fn, jit_compile=True, autograph=False)
        self.concrete = {}

    def __call__(self, tensors):
        if tfcompat.gradient_may_be_recorded():
            # Under a tape, through `tf.function`: it builds the backward
            # program inside the XLA context, so code that chooses kernels by
            # that context (the LU of the stiff methods' backward solves)
            # sees it; the gradient of a bare ConcreteFunction call is traced
            # outside it and fails to compile.
            return self.function(*tensors)
        # The caller's key may leave shapes out (``u0``'s, for one): a traced
        # function only takes the shapes it was traced with.
        shapes = tuple((x.dtype, tuple(x.shape)) for x in tensors)
        concrete = self.concrete.get(shapes)
        if concrete is None:
            concrete = self.concrete[shapes] = self.function.get_concrete_function(*tensors)
        return tfcompat.call_flat(concrete, tensors)


def cached_function(key, build: Callable[[], Callable]) -> Compiled:
    """The compiled function for ``key``, built (``build()`` returns the Python function) once."""
    fn = _CACHE.get(key)
    if fn is None:
        fn = Compiled(build())
        _CACHE[key] = fn
        while len(_CACHE) > MAX_ENTRIES:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return fn


def flat_inputs(u0, converted, float_leaves, extra) -> list:
    """The argument list of a compiled entry point: one layout for the full and the fast path.

    ``converted`` are the validated ``(t0, t1, ts, rtol, atol, dt, dtmin,
    dtmax)``; ``None`` ones (and ``None`` extras) are left out (their absence
    is part of the key).
    """
    return [u0, *(x for x in converted if x is not None), *float_leaves, *(x for x in extra if x is not None)]


def _value_kind(x, dtype):
    """The key of one input checked by value, or None when it is not plain (full path)."""
    kind = type(x)
    if x is None or kind in _NUMBERS:
        return kind
    if kind is _EAGER_TENSOR:
        # Another dtype is cast (a new tensor) or refused: the full path.
        return ("tensor", x.shape) if x.dtype == dtype else None
    if kind is np.ndarray:
        return ("array", x.dtype.str, x.shape)
    return None


def _same_value(x, raw, value) -> bool:
    """Whether input ``x`` equals the validated ``raw`` (of the same kind)."""
    if x is raw and type(x) is not np.ndarray:  # tensors are immutable; arrays are not
        return True
    kind = type(x)
    if kind in _NUMBERS:
        return bool(x == raw)  # NaN is never equal: the full path then raises
    if x is None:
        return True
    return np.array_equal(x if kind is np.ndarray else x.numpy(), value)


def _p_layout(p, dtype):
    """``(key, float leaves in tf.nest order)`` of a plain ``p``, or None.

    Plain: None, a tensor of the state dtype, or a flat list / tuple / dict
    of those. Other nests (non-floating leaves, variables, numbers) take the
    full path, whose `signature` handles them.
    """
    if p is None:
        return (None,), []
    kind = type(p)
    if kind is _EAGER_TENSOR:
        return ((p.shape,), [p]) if p.dtype == dtype else None
    if kind is dict:
        try:
            names = sorted(p)
        except TypeError:
            return None
        leaves = [p[k] for k in names]
        names = tuple(names)
    elif kind is list or kind is tuple:
        leaves, names = list(p), len(p)
    else:
        return None
    for x in leaves:
        if type(x) is not _EAGER_TENSOR or x.dtype != dtype:
            return None
    return (kind, names, tuple(x.shape for x in leaves)), leaves


class _Entry:
    """A fast-path entry: the compiled function, and the inputs last validated for it."""

    __slots__ = ("function", "alg", "raws", "values", "converted", "variables")

    def __init__(self, function, alg, raws, converted):
        self.function = function
        self.alg = alg
        self.raws = raws
        self.values = [np.array(x) if type(x) is np.ndarray else x.numpy() if type(x) is _EAGER_TENSOR else None
                       for x in raws]
        self.converted = converted
        self.variables = None


class FastCall:
    """An eager call reduced to a cheap key and its inputs, before any validation.

    Attributes:
      key: hashable: the entry point, the problem's non-input attributes,
        dtypes and shapes, the kind of every value-checked input, ``static``.
      raws: the value-checked inputs as given: ``(t0, t1, saveat, rtol, atol,
        dt, dtmin, dtmax)``.
      u0, float_leaves, extra: the tensors passed as they are.
    """

    __slots__ = ("key", "raws", "u0", "float_leaves", "extra")

    def __init__(self, key, raws, u0, float_leaves, extra):
        self.key, self.raws, self.u0, self.float_leaves, self.extra = key, raws, u0, float_leaves, extra

    def lookup(self):
        """``(entry, flat tensors, ts)`` when this structure was compiled and these values validated, else None."""
        try:
            entry = _FAST.get(self.key)
        except TypeError:  # an unhashable option: the full path says what is wrong
            return None
        if entry is None:
            return None
        raws = self.raws
        for x, raw, value in zip(raws, entry.raws, entry.values):
            if not _same_value(x, raw, value):
                return None
        _FAST.move_to_end(self.key)
        # Tensors given are passed as they are (gradients reach them); numbers
        # and arrays were converted when they were validated.
        converted = [x if type(x) is _EAGER_TENSOR else c for x, c in zip(raws, entry.converted)]
        t0, t1, saveat = raws[0], raws[1], raws[2]
        if saveat is None and (type(t0) is _EAGER_TENSOR or type(t1) is _EAGER_TENSOR):
            converted[2] = tf.stack([converted[0], converted[1]])  # ts from the tensors given
        return entry, flat_inputs(self.u0, converted, self.float_leaves, self.extra), converted[2]

    def remember(self, function, alg, converted) -> _Entry:
        """Record ``function`` for this key, with the just-validated inputs and their ``converted`` tensors."""
        entry = _Entry(function, alg, self.raws, list(converted))
        try:
            _FAST[self.key] = entry
        except TypeError:
            return entry
        while len(_FAST) > MAX_ENTRIES:
            _FAST.popitem(last=False)
        return entry


def fast_call(name, prob, raws, static, extra=()) -> FastCall | None:
    """The `FastCall` of an eager entry-point call, or None when its inputs are not plain.

    ``raws`` are ``(saveat, rtol, atol, dt, dtmin, dtmax)`` as given (the
    times come from ``prob.tspan``); ``static`` is a tuple of hashable
    options compared by equality (method, sensitivity algorithm, controller,
    ``max_steps`` with its type, ...); ``extra`` further tensors of the call
    (or None).
    """
    global _EAGER_TENSOR
    if _EAGER_TENSOR is None:
        _EAGER_TENSOR = type(tf.constant(0.0))
    u0 = prob.u0
    if type(u0) is not _EAGER_TENSOR:
        return None
    dtype = u0.dtype
    tspan = prob.tspan
    if type(tspan) is not tuple or len(tspan) != 2:
        return None
    raws = (tspan[0], tspan[1], *raws)
    kinds = []
    for x in raws:
        kind = _value_kind(x, dtype)
        if kind is None:
            return None
        kinds.append(kind)
    layout = _p_layout(prob.p, dtype)
    if layout is None:
        return None
    extra_kinds = []
    for x in extra:
        if x is None:
            extra_kinds.append(None)
        elif type(x) is _EAGER_TENSOR:
            extra_kinds.append((x.dtype, x.shape))
        else:
            return None
    fields = _plain_problem_fields(prob)
    if fields is None:
        return None
    key = (name, type(prob), fields, dtype, u0.shape, layout[0], tuple(kinds), static,
           tuple(extra_kinds))
    return FastCall(key, raws, u0, layout[1], extra)

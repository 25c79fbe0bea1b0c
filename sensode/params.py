"""Parameters: the one place that splits ``p`` into what can be differentiated and the rest.

``p`` may be ``None``, a tensor, a `tf.Variable`, a NumPy array, a Python
number, or a nest (dict / list / tuple) of those. Its *differentiable leaves*
are the floating tensors and variables: gradients reach them. Every other
leaf (integers, booleans, Python numbers, strings) is passed to ``f``
unchanged and gets no gradient (``None``). A Python ``float`` is a constant:
a tape cannot watch it, so it has nothing to differentiate.

Every module that needs this rule uses `Params` (sensitivities, the implicit
adjoint, the front-ends), so the rule is written once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

__all__ = ["Params", "is_differentiable", "leaves", "find_variables"]


def leaves(p) -> list:
    """The leaves of a parameter nest; ``None`` has none (not ``[None]``)."""
    return [] if p is None else tf.nest.flatten(p)


def is_differentiable(x) -> bool:
    """Whether a leaf of ``p`` is a floating tensor, variable or array."""
    if isinstance(x, (tf.Variable, np.ndarray)) or tf.is_tensor(x):
        return tf.as_dtype(x.dtype).is_floating
    return False


def find_variables(f, t, u, p) -> list:
    """The `tf.Variable`s that ``f(t, u, p)`` reads, found by one traced call.

    Costs one evaluation in eager mode; inside a graph the call is dead code
    that the runtime prunes.
    """
    with tf.GradientTape(watch_accessed_variables=True) as tape:
        f(t, u, p)
    return list(tape.watched_variables())


class Params:
    """``p`` split into its differentiable leaves and the rest.

    Attributes:
      p: the nest as given.
      leaves: all leaves, in `tf.nest.flatten` order.
      differentiable: one boolean per leaf.
      variables: the `tf.Variable`s that ``f`` reads (given by the caller;
        they are differentiated like parameters).
    """

    def __init__(self, p: Any, variables=()):
        self.p = p
        self.leaves = leaves(p)
        self.differentiable = [is_differentiable(x) for x in self.leaves]
        self.variables = list(variables)

    @property
    def float_leaves(self) -> list:
        """The differentiable leaves as tensors (variables read, arrays converted)."""
        return [tf.convert_to_tensor(x) for x, d in zip(self.leaves, self.differentiable) if d]

    @property
    def sizes(self) -> list:
        """Number of entries of each differentiable leaf."""
        return [int(np.prod(x.shape)) for x, d in zip(self.leaves, self.differentiable) if d]

    def pack(self, float_values) -> Any:
        """``p`` with its differentiable leaves replaced by ``float_values`` (in order)."""
        if self.p is None:
            return None
        it = iter(float_values)
        return tf.nest.pack_sequence_as(self.p, [next(it) if d else x for x, d in zip(self.leaves, self.differentiable)])

    def expand(self, float_values) -> list:
        """A list over all leaves: ``float_values`` at the differentiable ones, None elsewhere."""
        it = iter(float_values)
        return [next(it) if d else None for d in self.differentiable]

    def as_nest(self, float_values) -> Any:
        """Like `expand`, packed as ``p`` (None for ``p=None``)."""
        if self.p is None:
            return None
        return tf.nest.pack_sequence_as(self.p, self.expand(float_values))

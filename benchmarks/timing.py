"""Timing helper shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import statistics
import time


def measure(call, reps: int):
    """First-call time (s), median of ``reps`` later calls (ms), and the last output.

    The first call includes tracing and XLA compilation; the median is taken
    over the warm calls only.
    """
    start = time.perf_counter()
    out = call()
    first = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - start)
    return first, 1e3 * statistics.median(times), out

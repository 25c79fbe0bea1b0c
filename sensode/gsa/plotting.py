"""Figures of global sensitivity results (matplotlib, the ``plot`` extra)."""

from __future__ import annotations

import numpy as np

from .estimators import DGSMResult, MorrisResult, SobolResult

__all__ = ["plot"]


def plot(result, path, *, t=None, title=None):
    """Save a figure of ``result`` to ``path``.

    Scalar outputs: bars per parameter with confidence intervals as error bars
    (Sobol: first-order and total side by side; Morris: ``mu*``; DGSM: the
    total-index bound). Time-resolved Sobol outputs (``[D, T]``): first-order
    indices as stacked areas over ``t``, the total indices as lines.

    Raises:
      ImportError: matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("the figure needs matplotlib: pip install 'sensode[plot]'") from err
    names = list(result.names)
    fig, ax = plt.subplots(figsize=(7, 4))
    if isinstance(result, SobolResult) and result.S1.ndim == 2:
        t = np.arange(result.S1.shape[1]) if t is None else np.asarray(t)
        ax.stackplot(t, np.clip(result.S1, 0.0, None), labels=[f"S1 {n}" for n in names], alpha=0.7)
        for i, n in enumerate(names):
            ax.plot(t, result.ST[i], lw=1.2, ls="--", label=f"ST {n}")
        ax.set_xlabel("t")
        ax.set_ylabel("index")
    else:
        x = np.arange(len(names))
        if isinstance(result, SobolResult):
            bars = [("S1", result.S1, result.S1_conf), ("ST", result.ST, result.ST_conf)]
        elif isinstance(result, MorrisResult):
            bars = [("mu*", result.mu_star, result.mu_star_conf), ("sigma", result.sigma, None)]
        elif isinstance(result, DGSMResult):
            bars = [("ST bound", result.bound, result.bound_conf)]
        else:
            raise TypeError(f"`result` must be a SobolResult, MorrisResult or DGSMResult, got {type(result).__name__}")
        width = 0.8 / len(bars)
        for k, (label, val, conf) in enumerate(bars):
            val = np.asarray(val)
            val = val if val.ndim == 1 else val.mean(axis=1)
            err = None if conf is None or np.ndim(conf) != 1 else conf
            ax.bar(x + (k - (len(bars) - 1) / 2) * width, val, width, yerr=err, capsize=3, label=label)
        ax.set_xticks(x, names)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

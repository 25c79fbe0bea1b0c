"""The result of `sensode.compare_sensitivities`: one `Row` per algorithm, the `Comparison` table.

A `Comparison` renders as an aligned text table (``str``), as JSON
(``to_json`` / ``from_json``) and as a figure of error versus time (``plot``,
needs the optional ``matplotlib``).
"""

from __future__ import annotations

import dataclasses
import json

@dataclasses.dataclass
class Row:
    """One algorithm's line of the comparison.

    Attributes:
      sensealg: the algorithm's name, e.g. ``"InterpolatingAdjoint(checkpoints=4)"``,
        ``"finite differences"``.
      gradient: ``[n]`` flattened ``dL/dθ`` as a list of floats (None if failed / skipped).
      rel_error: ``|g - g_ref|_2 / |g_ref|_2`` (None if not computed).
      time_s: median wall time of one loss-and-gradient call after warm-up.
      compile_s: wall time of the first call (tracing, plus XLA compilation under ``jit_compile``).
      nfe_forward: right-hand-side evaluations of the forward solve (``sol.stats['nfe']``).
      nfe_backward: evaluations (or VJPs) of the backward pass; see ``nfe_note``.
      peak_memory_bytes: peak of TensorFlow's CPU/GPU allocator during one call, or None.
      status: ``"ok"``, ``"inaccurate"`` (rel_error above the comparison's tolerance),
        ``"failed: ..."`` or ``"skipped: ..."``.
      nfe_note: how ``nfe_backward`` was obtained.
    """

    sensealg: str
    gradient: list | None = None
    rel_error: float | None = None
    time_s: float | None = None
    compile_s: float | None = None
    nfe_forward: int | None = None
    nfe_backward: int | None = None
    peak_memory_bytes: int | None = None
    status: str = "ok"
    nfe_note: str = ""


@dataclasses.dataclass
class Comparison:
    """The result of `compare_sensitivities`.

    Attributes:
      rows: list of `Row`, one per algorithm, then the finite-difference row.
      reference: how the reference gradient was computed (text).
      reference_gradient: ``[n]`` list of floats.
      tolerance: the relative error a row may have and still be ``"ok"``.
      problem: a short description of the problem, method and tolerances.
      memory_note: how memory was measured (or why it was not).
    """

    rows: list
    reference: str
    reference_gradient: list
    tolerance: float
    problem: str = ""
    memory_note: str = ""

    def __str__(self) -> str:
        head = ["sensealg", "rel_error", "time_ms", "compile_s", "nfe_fwd", "nfe_bwd", "peak_MB", "status"]

        def fmt(x, spec):
            return "-" if x is None else format(x, spec)

        lines = [
            [
                r.sensealg, fmt(r.rel_error, ".2e"), fmt(None if r.time_s is None else 1e3 * r.time_s, ".2f"),
                fmt(r.compile_s, ".1f"), fmt(r.nfe_forward, "d"), fmt(r.nfe_backward, "d"),
                fmt(None if r.peak_memory_bytes is None else r.peak_memory_bytes / 2**20, ".2f"), r.status,
            ]
            for r in self.rows
        ]
        widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
        out = [self.problem, f"reference: {self.reference}; ok if rel_error <= {self.tolerance:.1e}"]
        for x in [head] + lines:
            out.append("  ".join(s.ljust(w) if i in (0, 7) else s.rjust(w) for i, (s, w) in enumerate(zip(x, widths))).rstrip())
        notes = sorted({f"{r.sensealg}: nfe_bwd {r.nfe_note}" for r in self.rows if r.nfe_note})
        out += notes + ([self.memory_note] if self.memory_note else [])
        return "\n".join(out)

    def to_json(self) -> str:
        """A JSON list of rows (dicts with the `Row` fields); metadata rides in every row."""
        meta = dict(reference=self.reference, reference_gradient=self.reference_gradient,
                    tolerance=self.tolerance, problem=self.problem, memory_note=self.memory_note)
        return json.dumps([dict(dataclasses.asdict(r), **meta) for r in self.rows], indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Comparison":
        """Inverse of `to_json`."""
        data = json.loads(text)
        if not data:
            raise ValueError("empty comparison JSON")
        names = {f.name for f in dataclasses.fields(Row)}
        rows = [Row(**{k: v for k, v in d.items() if k in names}) for d in data]
        d = data[0]
        return cls(rows=rows, reference=d["reference"], reference_gradient=d["reference_gradient"],
                   tolerance=d["tolerance"], problem=d.get("problem", ""), memory_note=d.get("memory_note", ""))

    def row(self, name: str) -> Row:
        """The row named ``name``."""
        for r in self.rows:
            if r.sensealg == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {[r.sensealg for r in self.rows]}")

    def plot(self, path: str) -> None:
        """Save a figure of relative error versus median time, one point per algorithm (PNG, PDF, ...).

        Raises:
          ImportError: matplotlib is missing (``pip install sensode[plot]``).
        """
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise ImportError("Comparison.plot needs matplotlib: pip install 'sensode[plot]'") from e
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        for r in self.rows:
            if r.time_s is None or r.rel_error is None:
                continue
            ax.scatter(r.time_s * 1e3, max(r.rel_error, 1e-17), label=r.sensealg)
        ax.axhline(self.tolerance, color="gray", ls="--", lw=0.8, label="tolerance")
        ax.set(xscale="log", yscale="log", xlabel="median time per gradient [ms]",
               ylabel="relative error of dL/dθ", title=self.problem[:80])
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

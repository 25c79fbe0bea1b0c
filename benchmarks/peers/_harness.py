"""Shared harness of the peer scripts (runs in the peers virtualenv, not sensode's).

A peer script declares its measurements as ``{key: factory}``; a key is
``(workload, kind, name)`` with ``kind`` ``"forward"`` or ``"gradient"``. A
factory receives the workload data (``--data``, an ``.npz`` written by
``benchmarks/peers_benchmark.py``; every peer reads the same arrays as
sensode) and returns a zero-argument callable whose result is a dict with
``loss`` (a float) and, for gradients, ``grad`` (a list of NumPy arrays in a
fixed order documented by the script). The first call compiles (JAX) or
builds (CasADi) and is timed separately as ``compile_s``. A factory may also
return ``(call, extra)`` where ``extra`` is a zero-argument callable returning
a dict of statistics (evaluation counts, steps) measured once, outside the
timings.

Two modes:

* standalone (default): every measurement (or those matching ``--only``) once,
  ``--reps`` timed calls each, one JSON line per measurement on stdout;
* ``--serve``: read JSON requests ``{"workload", "kind", "name", "reps"}``
  one per line on stdin, answer each with one JSON line on stdout (compiling
  on the first request of a key). ``benchmarks/peers_benchmark.py`` uses this
  to interleave the peer's timings with sensode's, so that the load of a
  shared machine falls on both alike. ``{"list": true}`` answers with the keys.

Each line: ``library``, ``name``, ``workload``, ``kind``, ``seconds`` (median
of the timed calls), ``n`` (timed calls), ``times`` (each, seconds),
``compile_s``, ``loss``, ``grad_file`` (an ``.npz`` of the gradient, under
``--out``), and the statistics the factory reports (``evaluations`` where the
library exposes them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)


class Runner:
    def __init__(self, library: str, table: dict, data, out: str):
        self.library = library
        self.table = table
        self.data = data
        self.out = out
        self.ready = {}

    def prepare(self, key):
        if key not in self.ready:
            made = self.table[key](self.data)
            call, extra = made if isinstance(made, tuple) else (made, None)
            start = time.perf_counter()
            res = call()
            compile_s = time.perf_counter() - start
            stats = extra() if extra is not None else {}
            grad_file = None
            if "grad" in res:
                os.makedirs(self.out, exist_ok=True)
                grad_file = os.path.join(self.out, _safe(f"{self.library}_{key[0]}_{key[2]}") + ".npz")
                np.savez(grad_file, *[np.asarray(g, np.float64) for g in res["grad"]])
            self.ready[key] = (call, compile_s, stats, grad_file, res)
        return self.ready[key]

    def measure(self, key, reps: int) -> dict:
        call, compile_s, stats, grad_file, res = self.prepare(key)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            res = call()
            times.append(time.perf_counter() - start)
        line = {"library": self.library, "name": key[2], "workload": key[0], "kind": key[1],
                "seconds": statistics.median(times) if times else None, "n": reps, "times": times,
                "compile_s": round(compile_s, 3), "loss": float(res["loss"]), "grad_file": grad_file}
        line.update({k: v for k, v in res.items() if k not in ("loss", "grad")})
        line.update(stats)
        line["load"] = os.getloadavg()[0]
        return line


def main(library: str, table: dict, argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="workloads .npz written by benchmarks/peers_benchmark.py")
    ap.add_argument("--out", default="/tmp/sensode_peers", help="folder for the gradients (.npz)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default="", help="comma-separated substrings of 'workload/kind/name' to run")
    ap.add_argument("--serve", action="store_true", help="answer JSON requests on stdin")
    args = ap.parse_args(argv)
    data = dict(np.load(args.data))
    runner = Runner(library, table, data, args.out)
    if not args.serve:
        only = [s for s in args.only.split(",") if s]
        for key in table:
            if only and not any(s in "/".join(key) for s in only):
                continue
            try:
                line = runner.measure(key, args.reps)
            except Exception as e:  # a row per failure, never hidden
                line = {"library": library, "name": key[2], "workload": key[0], "kind": key[1],
                        "error": repr(e)[:300]}
            print(json.dumps(line), flush=True)
        return
    for raw in sys.stdin:
        raw = raw.strip()
        if not raw:
            continue
        req = json.loads(raw)
        if req.get("list"):
            print(json.dumps({"keys": [list(k) for k in table]}), flush=True)
            continue
        key = (req["workload"], req["kind"], req["name"])
        try:
            line = runner.measure(key, int(req.get("reps", 5)))
        except Exception as e:
            line = {"library": library, "name": key[2], "workload": key[0], "kind": key[1], "error": repr(e)[:300]}
        print(json.dumps(line), flush=True)

"""Run each test file in a fresh Python process (used by ``conftest.py``).

Why: every distinct XLA program a process compiles stays in memory until the
process exits (TensorFlow keeps its compilation cache for the process's
lifetime; deleting the ``tf.function``, resetting the eager context and
``malloc_trim`` release nothing). One process running the whole suite, or two
xdist workers running half of it each, grew to 10-13 GB and stalled a 24 GB
machine. A process per file bounds the peak by the largest file instead.

``python -m pytest -q`` with two or more test files selected (the default:
``testpaths``) starts one ``python -m pytest`` per file, a few at a time, with
the same options, and prints one line per file, the output of any file that
did not pass, the slowest tests of the whole run (``--durations``) and the
summary. The children's results come back as JUnit XML. A file that crashes
(e.g. a segfault in a compiled program) or hangs (killed after
``FILE_TIMEOUT_S``) is reported with its output and fails the run; ``-x``
starts no further file after a failure. Anything else (one file, node ids,
``--collect-only``, ``--pdb``, ``--file-processes=0``) runs in this process as
plain pytest does.
"""

from __future__ import annotations

import concurrent.futures
import fnmatch
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

CHILD_ENV = "SENSODE_TEST_FILE_PROCESS"
FILE_TIMEOUT_S = 3600  # a file still running after this is killed and reported (a hang)
GB_PER_PROCESS = 4.0  # the largest file (test_stiff_krylov.py, test_sensitivities.py) peaks near 3.7 GB


def add_option(parser):
    parser.getgroup("sensode").addoption(
        "--file-processes",
        type=int,
        default=None,
        metavar="N",
        help="run each test file in its own process, N at a time (default: one per "
        f"CPU core and per {GB_PER_PROCESS:g} GB of available memory); 0 runs "
        "everything in this process",
    )


def default_processes():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    available_gb = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available_gb = int(line.split()[1]) / 2**20
    except OSError:
        pass
    by_memory = int(available_gb // GB_PER_PROCESS) if available_gb else cores
    return max(1, min(cores or 1, by_memory))


def _test_files(config):
    """The test files the positional arguments name, or None to run in-process."""
    patterns = config.getini("python_files")
    files = []
    for arg in config.args:
        if "::" in arg:
            return None
        path = Path(arg)
        if not path.is_absolute():
            path = Path(config.invocation_params.dir, arg)
        if path.is_dir():
            files.extend(
                p for p in sorted(path.rglob("*.py"))
                if any(fnmatch.fnmatch(p.name, pat) for pat in patterns)
            )
        elif path.is_file():
            files.append(path)
        else:
            return None  # let pytest report the bad argument
    return files


def _child_args(config):
    """The invocation's options without its positional arguments."""
    import pytest

    args = list(config.invocation_params.args)
    if config.args_source == pytest.Config.ArgsSource.ARGS:
        positional = set(config.args)
        args = [a for a in args if a not in positional]
    return args


class _Result:
    def __init__(self, path, rel):
        self.path, self.rel = path, rel
        self.counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
        self.cases = []  # (seconds, node id)
        self.returncode = None
        self.seconds = 0.0
        self.peak_gb = 0.0
        self.output = ""
        self.timed_out = False

    def read_junit(self, xml_path):
        try:
            root = ET.parse(xml_path).getroot()
        except (OSError, ET.ParseError):
            return False
        for case in root.iter("testcase"):
            children = {c.tag for c in case}
            if "failure" in children:
                self.counts["failed"] += 1
            elif "error" in children:
                self.counts["errors"] += 1
            elif "skipped" in children:
                self.counts["skipped"] += 1
            else:
                self.counts["passed"] += 1
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            self.cases.append((float(case.get("time") or 0.0), name))
        return True

    @property
    def ok(self):
        return self.returncode in (0, 5)  # 5: every test deselected


def _run_one(result, args, rootdir, stop_event, procs, timeout_s=FILE_TIMEOUT_S):
    with tempfile.TemporaryDirectory(prefix="sensode-tests-") as tmp:
        xml_path = os.path.join(tmp, "junit.xml")
        log_path = os.path.join(tmp, "output.txt")
        cmd = [sys.executable, "-m", "pytest", *args, "--file-processes=0",
               f"--junitxml={xml_path}", str(result.path)]
        env = dict(os.environ, **{CHILD_ENV: "1"})
        start = time.perf_counter()
        with open(log_path, "w+b") as log:
            if stop_event.is_set():
                return result
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=rootdir,
                                    env=env, start_new_session=True)
            procs.add(proc)
            timer = threading.Timer(timeout_s, _kill_group, (proc, result))
            timer.start()
            _, status, usage = os.wait4(proc.pid, 0)
            timer.cancel()
            proc.returncode = os.waitstatus_to_exitcode(status)
            procs.discard(proc)
            result.returncode = proc.returncode
            result.seconds = time.perf_counter() - start
            result.peak_gb = usage.ru_maxrss / 2**20  # kilobytes on Linux
            log.seek(0)
            result.output = log.read().decode(errors="replace")
        if not result.read_junit(xml_path) and result.returncode == 0:
            result.returncode = 3
    return result


def _kill_group(proc, result=None):
    if result is not None:
        result.timed_out = True
    try:
        os.killpg(proc.pid, signal.SIGKILL if result is not None else signal.SIGTERM)
    except OSError:
        pass


def _summary(result):
    if result.returncode is None:
        return "not run (stopped early)"
    parts = [f"{n} {k}" for k, n in result.counts.items() if n]
    text = ", ".join(parts) or "no tests"
    if result.timed_out:
        text += f", killed after {FILE_TIMEOUT_S} s"
    elif result.returncode < 0:
        text += f", killed by signal {-result.returncode}"
    elif not result.ok and not (result.counts["failed"] or result.counts["errors"]):
        text += f", exit status {result.returncode}"
    return f"{text} in {result.seconds:.1f} s, peak {result.peak_gb:.2f} GB"


def main(config):
    """``pytest_cmdline_main``: the exit status, or None to run in this process."""
    if os.environ.get(CHILD_ENV):
        return None
    nproc = config.getoption("file_processes")
    if nproc == 0 or config.getoption("collectonly") or config.getoption("usepdb"):
        return None
    if not hasattr(os, "wait4"):  # Windows: no per-child peak memory; run in this process
        return None
    files = _test_files(config)
    if files is None or len(files) < 2:
        return None
    nproc = nproc or default_processes()
    rootdir = str(config.rootpath)
    cache = getattr(config, "cache", None)
    known = (cache.get("sensode/file_seconds", {}) if cache else {}) or {}

    def rel(p):
        try:
            return str(p.relative_to(config.rootpath))
        except ValueError:
            return str(p)

    # Longest first (last run's times, else file size) so the pool ends together.
    results = [_Result(p, rel(p)) for p in files]
    results.sort(key=lambda r: known.get(r.rel, r.path.stat().st_size / 1000.0), reverse=True)
    args = _child_args(config)
    write = sys.stdout.write
    write(f"sensode: {len(results)} test files, each in its own process, {nproc} at a time "
          f"(--file-processes=0 runs them in this one)\n")
    sys.stdout.flush()
    start = time.perf_counter()
    stop_event, procs = threading.Event(), set()
    interrupted = False
    with concurrent.futures.ThreadPoolExecutor(max_workers=nproc) as pool:
        futures = [pool.submit(_run_one, r, args, rootdir, stop_event, procs) for r in results]
        try:
            for fut in concurrent.futures.as_completed(futures):
                r = fut.result()
                if r.returncode is None:
                    continue  # not started: -x or an interrupt stopped the run
                mark = "ok    " if r.ok else "FAILED"
                write(f"{mark} {r.rel}: {_summary(r)}\n")
                if not r.ok:
                    write(r.output.rstrip() + "\n")
                    if config.getoption("maxfail"):  # -x or --maxfail: start no further file
                        stop_event.set()
                sys.stdout.flush()
        except KeyboardInterrupt:
            interrupted = True
            stop_event.set()
            for proc in list(procs):
                _kill_group(proc)
    wall = time.perf_counter() - start
    if cache is not None:
        cache.set("sensode/file_seconds", {r.rel: round(r.seconds, 1) for r in results if r.seconds})

    ndur = config.getoption("durations")
    if ndur is not None and ndur >= 0:
        cases = sorted((c for r in results for c in r.cases), reverse=True)
        cases = cases if ndur == 0 else cases[:ndur]
        write(f"\n{'=' * 20} slowest {'' if ndur == 0 else f'{ndur} '}test durations {'=' * 20}\n")
        for seconds, name in cases:
            write(f"{seconds:8.2f}s {name}\n")
    totals = {k: sum(r.counts[k] for r in results) for k in results[0].counts}
    bad = [r for r in results if not r.ok]
    peak = max(results, key=lambda r: r.peak_gb)
    text = ", ".join(f"{n} {k}" for k, n in totals.items() if n) or "no tests ran"
    write(f"\n{'=' * 10} {text} in {wall:.1f} s; {len(bad)} of {len(results)} files did not pass; "
          f"largest peak {peak.peak_gb:.2f} GB ({peak.rel}), "
          f"self {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB "
          f"{'=' * 10}\n")
    for r in bad:
        write(f"FAILED {r.rel}: {_summary(r)}\n")
    sys.stdout.flush()
    if interrupted:
        return 2
    if bad:
        return 1
    if all(r.returncode == 5 for r in results):
        return 5
    return 0

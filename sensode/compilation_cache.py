"""XLA's persistent compilation cache: compiled programs kept on disk between processes.

A solve or gradient compiled with XLA costs from a second (a small solve) to
minutes (a stiff gradient) the first time a process runs it. TensorFlow can
keep every compiled program in a directory and load it in the next process
that builds the same program (same computation, shapes, dtypes and device):
the second process then pays only for tracing. See ``docs/getting-started.md``
(section "Compilation cache").

The cache is TensorFlow's own (``TF_XLA_FLAGS=--tf_xla_persistent_cache_directory``),
read once when TensorFlow's runtime starts, so `enable_compilation_cache` must
run before the first TensorFlow operation of the process (``import sensode``
runs none). The command lines take ``--xla_cache=DIR`` (or
``$SENSODE_XLA_CACHE``) and enable it before anything else.
"""

from __future__ import annotations

import os
import sys
import warnings

from . import tfcompat

__all__ = [
    "enable_compilation_cache", "default_cache_directory", "from_flag", "from_argv", "active_directory",
    "CACHE_ENV", "FLAG_HELP",
]

CACHE_ENV = "SENSODE_XLA_CACHE"
_FLAG = "--tf_xla_persistent_cache_directory"
_OFF = ("", "0", "off", "none", "false")


def _is_off(value: str) -> bool:
    return value.strip().lower() in _OFF


def default_cache_directory() -> str | None:
    """Where the command lines keep compiled programs; None when disabled.

    ``$SENSODE_XLA_CACHE`` when set (an empty value, ``0`` or ``off`` disables
    the cache), else ``$XDG_CACHE_HOME/sensode/xla`` (``~/.cache/sensode/xla``).
    """
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if _is_off(value) else value
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sensode", "xla")


def _configured_directory(flags: str) -> str | None:
    found = None
    for item in flags.split():
        if item.startswith(_FLAG + "="):
            found = item.split("=", 1)[1]
    return found


def enable_compilation_cache(directory: str | os.PathLike | None = None, *, quiet: bool = False) -> str | None:
    """Keep XLA-compiled programs in ``directory`` and reuse them in later processes.

    Args:
      directory: a directory (created if missing); default
        `default_cache_directory()`. Programs are files of 0.1-10 MB named by a
        hash of the program; delete the directory to clear the cache.
      quiet: no warning when it is too late to enable the cache.

    Returns:
      The directory in use, or None when the cache is off: disabled by
      ``$SENSODE_XLA_CACHE``, or TensorFlow's runtime had already started
      (then a `RuntimeWarning` says so unless ``quiet``). If ``TF_XLA_FLAGS``
      already names a cache directory, that one is kept and returned.

    Raises:
      TypeError: ``directory`` is not a path.

    Call it before any TensorFlow operation (creating a tensor, a
    `tf.Variable`, a Keras model), e.g. right after the imports. A cached
    program is only reused by the same TensorFlow build on the same kind of
    CPU or GPU; keep the directory per machine.
    """
    if directory is not None and not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"enable_compilation_cache: `directory` must be a path or None, got {type(directory).__name__}")
    flags = os.environ.get("TF_XLA_FLAGS", "")
    existing = _configured_directory(flags)
    if existing is not None:
        return existing
    directory = default_cache_directory() if directory is None else os.fspath(directory)
    if directory is None:
        return None
    if tfcompat.runtime_started():
        if not quiet:
            warnings.warn(
                "enable_compilation_cache: TensorFlow's runtime has already started, so "
                "TF_XLA_FLAGS can no longer change; call it before the first TensorFlow "
                "operation (or set TF_XLA_FLAGS=" + _FLAG + "=DIR in the environment). "
                "No cache in this process.",
                RuntimeWarning,
                stacklevel=2,
            )
        return None
    directory = os.path.abspath(os.path.expanduser(directory))
    os.makedirs(directory, exist_ok=True)
    os.environ["TF_XLA_FLAGS"] = f"{flags} {_FLAG}={directory}".strip()
    return directory


def from_flag(value: str | None) -> str | None:
    """The command lines' ``--xla_cache``: a directory, ``off``, or None (``$SENSODE_XLA_CACHE``).

    Off unless the flag or ``$SENSODE_XLA_CACHE`` names a directory: a warm
    cache saves a fifth of the main demo's time and TensorFlow logs one
    harmless "Error parsing text-format" line per program it loads (see
    ``docs/getting-started.md``). Returns the directory in use (see
    `enable_compilation_cache`); quiet when TensorFlow has already started (a
    command line run inside a test or a notebook then compiles as usual).
    """
    if value is None:
        value = os.environ.get(CACHE_ENV)
        if value is None:
            return None
    if _is_off(value):
        return None
    return enable_compilation_cache(value, quiet=True)


def from_argv(argv) -> str | None:
    """`from_flag` for the ``--xla_cache`` in a command line, before absl parses it.

    The command lines call it before ``absl.app.run``: TensorFlow imported
    after absl's start-up fixes its XLA flags before the first operation
    (measured with TensorFlow 2.21), so enabling the cache inside ``main`` is
    too late there. Says on stderr which directory is in use.
    """
    value = None
    for arg in list(argv)[1:]:
        if arg.startswith(("--xla_cache=", "-xla_cache=")):
            value = arg.split("=", 1)[1]
        elif arg in ("--noxla_cache", "-noxla_cache"):
            value = "off"
    directory = from_flag(value)
    if directory:
        print(f"XLA compilation cache: {directory}", file=sys.stderr)
    return directory


def active_directory() -> str | None:
    """The cache directory ``TF_XLA_FLAGS`` names in this process, or None."""
    return _configured_directory(os.environ.get("TF_XLA_FLAGS", ""))


FLAG_HELP = (
    "Directory of XLA's persistent compilation cache: a later run loads the programs compiled "
    "here instead of compiling them again. Default $SENSODE_XLA_CACHE, else off. "
    "See docs/getting-started.md#compilation-cache."
)

"""Run the aioc4 command line inside the test process, as `python -m aioc4` would run in a new one.

A new interpreter costs ~1.2 s of imports (aiobotocore, huggingface_hub, ...) before aioc4 does anything;
most end-to-end tests only look at the exit code, stdout, stderr and what was written, which an in-process
call gives as well, provided that it starts from what a new process would start from and leaves nothing
behind. For the length of one call `run_in_process`:

- replaces `os.environ` by exactly the environment the subprocess would get, and the working folder;
- gives the call its own stdout (a string buffer) and stderr: file descriptor 2 itself goes to a temporary
  file, so what child processes (`--procs`) write to the inherited stderr is captured too, in order;
- recomputes `huggingface_hub.constants` (and the few copies other modules take at import) from that
  environment by running the module's code again, as a new process would at import;
- shows warnings, logging's last resort, unraisable and thread exceptions on that stderr with Python's
  default settings, instead of pytest's capture;
- afterwards puts back the environment, the folder, the `aioc4` and root loggers, huggingface_hub's HTTP
  client factory (closing the client the call made), its progress-bar switches, and the SIGINT/SIGTERM
  handlers, and waits for non-daemon threads the call left running (an interpreter would wait at exit).

Environment variables that libraries read once at import into places this cannot patch faithfully make a
call fail loudly: such a test must use `Aioc4.process()`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import _http as hf_http
from huggingface_hub.utils import logging as hf_logging

from aioc4.cli import run_cli

__all__ = ["InProcessResult", "run_in_process"]

# Copies of huggingface_hub constants that other modules take with `from ..constants import X` at import.
# (huggingface_hub.utils exports a `tqdm` class that hides its `tqdm` module: hence import_module.)
_hf_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")
_HF_CONSTANT_COPIES = (
    (_hf_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS"),
    (importlib.import_module("huggingface_hub.utils._cache_manager"), "HF_HUB_CACHE"),
    (importlib.import_module("huggingface_hub.utils._cache_assets"), "HF_ASSETS_CACHE"),
    (importlib.import_module("huggingface_hub.utils._git_credential"), "ENDPOINT"),
)
# Constants that are also baked into default arguments at import (`timeout=constants.HF_HUB_ETAG_TIMEOUT`).
_HF_FROZEN_CONSTANTS = ("HF_HUB_ETAG_TIMEOUT", "HF_HUB_DOWNLOAD_TIMEOUT")
_HF_IMPORT_VALUES = {name: getattr(hf_constants, name) for name in _HF_FROZEN_CONSTANTS}
# Read at import by the interpreter or by libraries aioc4 imports; a call may not change them.
_IMPORT_TIME_PREFIXES = ("PYTHON", "AIOHTTP_")
_IMPORT_TIME_ALLOWED = frozenset({"PYTHONPATH"})  # pytest puts the same folder on sys.path
_STARTUP_ENV = dict(os.environ)
# Python's default warning filters (no -W, no PYTHONWARNINGS, not a debug build), first match first.
_DEFAULT_WARNING_FILTERS: tuple[tuple[warnings._ActionKind, type[Warning], str], ...] = (
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
)
_MISSING = object()


class InProcessResult:
    """What `run_in_process` returns: the same fields as `subprocess.CompletedProcess`."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run_in_process(
    args: Sequence[str], *, cwd: Path, env: Mapping[str, str], timeout: float
) -> InProcessResult:
    """`python -m aioc4 *args` with `env` in `cwd`, run in this process; see the module's docstring.

    Raises `subprocess.TimeoutExpired` if the call took longer than `timeout` (as `subprocess.run` would,
    but only once the call has returned: a call that hangs is stopped by pytest-timeout instead).
    """
    _check_environment(env)
    stdout = io.StringIO(newline=None)  # universal newlines, as subprocess.run(text=True) reads
    started = time.monotonic()
    threads_before = set(threading.enumerate())
    with tempfile.TemporaryFile() as stderr_file:
        try:
            with _process_state(env, cwd), _stderr_to(stderr_file) as stderr, _library_state(stderr):
                with contextlib.redirect_stdout(stdout):
                    code = _run(args, stderr)
                    stdout.flush()
                _wait_for_threads(threads_before, started + timeout)
        finally:
            stderr_file.seek(0)
            written = io.BytesIO(stderr_file.read())
            stderr_text = io.TextIOWrapper(written, encoding="utf-8", newline=None).read()
    if time.monotonic() - started > timeout:
        raise subprocess.TimeoutExpired(["aioc4", *args], timeout, stdout.getvalue(), stderr_text)
    return InProcessResult(code, stdout.getvalue(), stderr_text)


def _check_environment(env: Mapping[str, str]) -> None:
    for name in set(env) | set(_STARTUP_ENV):
        read_at_import = name.startswith(_IMPORT_TIME_PREFIXES) and name not in _IMPORT_TIME_ALLOWED
        if read_at_import and env.get(name) != _STARTUP_ENV.get(name):
            raise RuntimeError(f"{name} is read at import: run this call with Aioc4.process()")


def _run(args: Sequence[str], stderr: TextIO) -> int:
    """The exit code `python -m aioc4` would end with; an uncaught exception is printed as Python does."""
    try:
        return run_cli(list(args))
    except SystemExit as exc:  # argparse's --help and --version
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=stderr)
        return 1
    except Exception:
        traceback.print_exc(file=stderr)
        return 1


@contextlib.contextmanager
def _process_state(env: Mapping[str, str], cwd: Path) -> Iterator[None]:
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        for signum, handler in handlers.items():
            if signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)


@contextlib.contextmanager
def _stderr_to(file: Any) -> Iterator[TextIO]:
    """File descriptor 2 and `sys.stderr` both write to `file` (unbuffered, as a pipe would see them)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved_fd = os.dup(2)
    os.dup2(file.fileno(), 2)
    stream = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", write_through=True
    )
    try:
        with contextlib.redirect_stderr(stream):
            yield stream
    finally:
        stream.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)


@contextlib.contextmanager
def _library_state(stderr: TextIO) -> Iterator[None]:
    """Logging, warnings, hooks and huggingface_hub as a new process has them; all put back afterwards."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(_fresh_logging(stderr))
        stack.enter_context(_default_warnings(stderr))
        stack.enter_context(_default_hooks())
        stack.enter_context(_fresh_hf_constants())  # after the warnings: a deprecated variable warns here
        stack.enter_context(_fresh_hf_client())
        yield


@contextlib.contextmanager
def _fresh_logging(stderr: TextIO) -> Iterator[None]:
    """No handler on the root logger (so logging's last resort prints on stderr), the `aioc4` logger as
    imported, and stream handlers that libraries add at import (huggingface_hub's) writing to `stderr`."""
    root, aioc4_log = logging.getLogger(), logging.getLogger("aioc4")
    saved: list[tuple[logging.Logger, list[logging.Handler], int, bool, list[Any], bool]] = [
        (logger, list(logger.handlers), logger.level, logger.propagate, list(logger.filters), logger.disabled)
        for logger in (root, aioc4_log)
    ]
    hf_root = logging.getLogger("huggingface_hub")
    hf_level = hf_root.level
    streams: list[tuple[logging.StreamHandler[Any], Any]] = []
    for logger in [*logging.Logger.manager.loggerDict.values()]:
        if isinstance(logger, logging.Logger):
            for handler in logger.handlers:
                if type(handler) is logging.StreamHandler:
                    streams.append((handler, handler.stream))
    root.handlers, root.level, root.filters, root.disabled = [], logging.WARNING, [], False
    aioc4_log.handlers, aioc4_log.level, aioc4_log.propagate, aioc4_log.filters = [], logging.NOTSET, True, []
    aioc4_log.disabled = False
    for handler, _ in streams:
        handler.setStream(stderr)
    try:
        yield
    finally:
        for handler, stream in streams:
            handler.setStream(stream)
        hf_root.setLevel(hf_level)
        for logger, handlers, level, propagate, filters, disabled in saved:
            for handler in logger.handlers:
                if handler not in handlers:
                    handler.close()
            logger.handlers, logger.level, logger.propagate = handlers, level, propagate
            logger.filters, logger.disabled = filters, disabled
        logging.Logger.manager._clear_cache()  # type: ignore[attr-defined]


@contextlib.contextmanager
def _default_warnings(stderr: TextIO) -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for action, category, module in reversed(_DEFAULT_WARNING_FILTERS):
            warnings.filterwarnings(action, category=category, module=module)

        def show(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: TextIO | None = None,
            line: str | None = None,
        ) -> None:
            (file or stderr).write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _default_hooks() -> Iterator[None]:
    """Python's own hooks print on (the call's) sys.stderr; pytest's would turn them into its warnings."""
    saved = sys.unraisablehook, threading.excepthook
    sys.unraisablehook, threading.excepthook = sys.__unraisablehook__, threading.__excepthook__
    try:
        yield
    finally:
        sys.unraisablehook, threading.excepthook = saved


@contextlib.contextmanager
def _fresh_hf_constants() -> Iterator[None]:
    """huggingface_hub.constants as `import huggingface_hub` computes it from the current environment."""
    spec = importlib.util.find_spec("huggingface_hub.constants")
    assert spec is not None
    assert spec.loader is not None
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)  # in a module object of its own: sys.modules is not touched
    for name in _HF_FROZEN_CONSTANTS:
        if getattr(fresh, name) != _HF_IMPORT_VALUES[name]:
            raise RuntimeError(f"huggingface_hub bakes {name} into defaults at import: use Aioc4.process()")
    saved: list[tuple[object, str, object]] = []

    def patch(target: object, name: str, value: object) -> None:
        current = getattr(target, name, _MISSING)
        if current is not value and current != value:
            saved.append((target, name, current))
            setattr(target, name, value)

    for name, value in vars(fresh).items():
        if name.startswith("__") or callable(value) or isinstance(value, types.ModuleType):
            continue
        patch(hf_constants, name, value)
    for module, name in _HF_CONSTANT_COPIES:
        patch(module, name, getattr(fresh, name))
    hf_root = logging.getLogger("huggingface_hub")
    hf_root.setLevel(logging.DEBUG if fresh.HF_DEBUG else hf_logging._get_default_logging_level())  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        for target, name, value in reversed(saved):
            if value is _MISSING:
                delattr(target, name)
            else:
                setattr(target, name, value)


@contextlib.contextmanager
def _fresh_hf_client() -> Iterator[None]:
    """No shared HTTP client yet (a new process has none); afterwards the factory the call installed
    (aioc4.hub.install_hub_client) is replaced by the one before it, which closes the call's client."""
    factory = hf_http._GLOBAL_CLIENT_FACTORY
    progress_bars = dict(_hf_tqdm.progress_bar_states)
    hf_http.close_session()
    try:
        yield
    finally:
        hf_http.set_client_factory(factory)
        _hf_tqdm.progress_bar_states.clear()
        _hf_tqdm.progress_bar_states.update(progress_bars)


def _wait_for_threads(before: set[threading.Thread], deadline: float) -> None:
    """An interpreter waits for its non-daemon threads before it exits: so does a call."""
    for thread in set(threading.enumerate()) - before:
        if not thread.daemon and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))

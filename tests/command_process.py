"""`python -m mura.COMMAND ARGS` in a process of its own, without the interpreter start and the five to seven seconds
of imports (torch, torchvision, Lightning, torchmetrics) that each command test paid: the process is forked from a
server (multiprocessing's forkserver, one per test process) that imported those libraries once and has run no test
and no command.

What the command gets, as from `python -m`: a pid and a process group of its own, its exit code (a signal that ended
it as a negative one, an uncaught Ctrl-C as SIGINT, `sys.exit("message")` as the message and 1) and the signal
dispositions of an interpreter; stdout and stderr on file descriptors 1 and 2, set up as Python sets them up on
files; the environment, working folder and CPU cores asked for; `sys.argv[0]` the module's file and the module run as
`__main__`, under the `MainProcess` name, with multiprocessing's default start method; `sys.path` a fresh
interpreter's, with the working folder and PYTHONPATH in front; at the end, non-daemon threads joined and atexit
handlers run. Whatever it leaves behind in its group (data loader workers, a second DDP process) is killed when it
ends.

What it cannot get: what those libraries did while they were imported, in the server: warnings or log lines printed
then, and variables read then (the environment the test process started with, tests/conftest.py's
OMP_NUM_THREADS=1 included; PYTHONHASHSEED, PYTHONWARNINGS, PYTHONUNBUFFERED and PYTHONIOENCODING in `env` change
nothing either). The tests about those start real interpreters: the run whose warnings are checked
(tests/test_commands.py), the import of mura.report (tests/test_report.py), the bench's measured start-up."""

from __future__ import annotations

import atexit
import contextlib
import json
import multiprocessing
import multiprocessing.forkserver
import multiprocessing.process
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from unittest.mock import patch

# What every command imports, in the order `import mura.train` does; mura's own modules are left to each command.
PRELOADED = ["torch", "torchvision", "pytorch_lightning", "hydra", "omegaconf", "pandas", "sklearn.metrics"]
# The environment this test process started with: the server's, whichever test (and its monkeypatches) starts it
_STARTING_ENVIRONMENT = dict(os.environ)

_context: multiprocessing.context.ForkServerContext | None = None
_interpreter_path: list[str] | None = None
_server_log: Path | None = None


def _forkserver() -> multiprocessing.context.ForkServerContext:
    global _context, _interpreter_path, _server_log
    if _context is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOADED)
        # The server's stdout and stderr are a log of its own, not the capture of whichever test started it: a
        # command process that failed before its command ran leaves its traceback there (run_command shows it).
        folder = tempfile.mkdtemp(prefix="mura_forkserver_")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _server_log = Path(folder) / "server.log"
        log = os.open(_server_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(log, 1)
            os.dup2(log, 2)
            with patch.dict(os.environ, _STARTING_ENVIRONMENT, clear=True):
                multiprocessing.forkserver.ensure_running()
        finally:
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
            os.close(log)
        # A fresh interpreter's sys.path after its first entry (the working folder under -m), PYTHONPATH left out
        environment = {key: value for key, value in _STARTING_ENVIRONMENT.items() if key != "PYTHONPATH"}
        printed = subprocess.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.path[1:]))"],
                                 env=environment, capture_output=True, text=True, check=True)
        _interpreter_path = json.loads(printed.stdout)
        _context = context
    return _context


def run_command(module: str, args: list[str], cwd: Path, env: dict[str, str] | None = None, cores: int | None = None,
                timeout: float = 300, piped_into: list[str] | None = None) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` from `cwd`, with `env` as its whole environment (default: this process's), on the
    first `cores` CPU cores when given (its affinity, as SLURM sets it); returns as `subprocess.run(...,
    capture_output=True, text=True)` would.

    `piped_into`: a command its stdout is piped into, as bash runs `python -m MODULE ARGS | COMMAND` under
    `set -o pipefail`: the result's stdout is that command's; its returncode the command's where that is not 0, else
    the module's, a signal that ended either as 128 + its number."""
    context = _forkserver()
    env = dict(os.environ if env is None else env)
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="mura_command_") as folder:
        stdout, stderr = Path(folder) / "stdout", Path(folder) / "stderr"
        for path in (stdout, stderr):
            path.touch()  # there to read even where the process ended before opening them
        # A pipe's write end travels to the process as a Connection (multiprocessing passes its descriptor)
        reading, writing = multiprocessing.Pipe(duplex=False) if piped_into else (None, None)
        process = context.Process(target=_run_as_main, args=(module, args, str(cwd), env, writing or str(stdout),
                                                             str(stderr), cores, _interpreter_path))
        process.start()
        try:
            reader = None
            if piped_into:
                writing.close()  # the process holds the only write end: the reader sees the end of the output
                try:
                    reader = subprocess.run(piped_into, stdin=reading.fileno(), capture_output=True, text=True,
                                            timeout=max(deadline - time.monotonic(), 0.1))
                finally:
                    reading.close()  # from here on the process writes into a closed pipe
            process.join(max(deadline - time.monotonic(), 0.1))
            if process.exitcode is None:
                raise subprocess.TimeoutExpired([module, *args], timeout, stdout.read_bytes(), stderr.read_bytes())
            code = process.exitcode
        finally:
            if process.exitcode is None:
                process.kill()
                process.join()
            _kill_group(process.pid)
            process.close()
        command, errors = [sys.executable, "-m", module, *args], stderr.read_text(errors="replace")
        if code != 0 and not errors:  # it failed before its stderr was its own: what it printed went to the server's
            errors = f"(nothing on the command's stderr; the command server's log, {_server_log}:)\n" + \
                     _server_log.read_text(errors="replace")[-5000:]
        if reader is None:
            return subprocess.CompletedProcess(command, code, stdout.read_text(errors="replace"), errors)
        statuses = [128 - status if status < 0 else status for status in (code, reader.returncode)]
        return subprocess.CompletedProcess([*command, "|", *piped_into], statuses[1] or statuses[0], reader.stdout,
                                           errors + reader.stderr)


def _kill_group(pgid: int) -> None:
    """SIGKILL to what is left of the command's process group (nothing, once it ended cleanly)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _run_as_main(module: str, args: list[str], cwd: str, env: dict[str, str], stdout: str | Connection, stderr: str,
                 cores: int | None, interpreter_path: list[str]) -> None:
    """In the forked process: set it up as the interpreter would have, run the module, end as the interpreter would.
    `stdout`: a file, or the write end of a pipe."""
    os.setpgid(0, 0)
    if isinstance(stdout, Connection):
        os.dup2(stdout.fileno(), 1)
        stdout.close()
    else:
        _open_as(stdout, 1)
    _open_as(stderr, 2)
    # As Python sets them up on a file or a pipe: buffered stdout, line-buffered stderr (3.9+), the locale's encoding
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the process's own stream, open until it ends
    sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    if cores is not None:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    sys.path[:] = [cwd, *(entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry), *interpreter_path]
    # An interpreter's main process, not the forkserver's child: its name, no parent process, the platform's default
    # start method (its data loader workers would otherwise start through a second forkserver, each importing torch)
    this = multiprocessing.current_process()
    this.name, this._identity, this._parent_pid, this._parent_name = "MainProcess", (), None, None
    multiprocessing.process._parent_process = None
    multiprocessing.set_start_method(None, force=True)
    sys.argv = [module, *args]  # runpy puts the module's file in argv[0], as `python -m` does
    code, interrupted = 0, False
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stopped:
        if stopped.code is None or isinstance(stopped.code, int):
            code = stopped.code or 0
        else:
            print(stopped.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:  # noqa: BLE001 - as the interpreter: any uncaught exception is a traceback and exit 1
        traceback.print_exc()
        code = 1
    for thread in threading.enumerate():  # as the interpreter ends: non-daemon threads joined, then atexit handlers
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # stdout into a closed pipe, say: the interpreter then ends with 120 where it would end with 0
            code = code or 120
    if interrupted:  # the interpreter ends an uncaught Ctrl-C by SIGINT, so its parent sees it
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code & 0xFF)


def _open_as(path: str, fd: int) -> None:
    opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(opened, fd)
    os.close(opened)

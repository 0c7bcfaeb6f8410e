"""`python -m mura.COMMAND ARGS` in a process of its own, without the interpreter start and the five to seven seconds
of imports (torch, torchvision, Lightning, torchmetrics) that each command test paid: the process is forked from a
server (multiprocessing's forkserver) that imported them once, and has never run a test or a command.

What the command sees is what `python -m` gives it: its own pid, exit code and signals; stdout and stderr on file
descriptors 1 and 2; the environment, working folder and CPU cores asked for; `sys.argv[0]` the module's file and the
module run as `__main__`; the interpreter's own warning filters and logging (no pytest in that process); PYTHONPATH
and the working folder at the front of `sys.path`; non-daemon threads joined and atexit handlers run at the end.
What it cannot see: a variable read when those libraries were imported (the server's environment, the test worker's
at its start: OMP_NUM_THREADS=1, tests/conftest.py), so tests about interpreter start itself (the import of
mura.report, the bench's startup row) start real interpreters."""

from __future__ import annotations

import atexit
import io
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import threading
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

# What every command imports, in the order `import mura.train` does; mura's own modules are left to each command.
PRELOADED = ["torch", "torchvision", "pytorch_lightning", "hydra", "omegaconf", "pandas", "sklearn.metrics"]

_context: multiprocessing.context.ForkServerContext | None = None


def _forkserver() -> multiprocessing.context.ForkServerContext:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOADED)
    return _context


def run_command(module: str, args: list[str], cwd: Path, env: dict[str, str] | None = None, cores: int | None = None,
                timeout: float = 300, piped_into: list[str] | None = None) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` from `cwd`, with `env` as its whole environment (default: this process's), on the
    first `cores` CPU cores when given (its affinity, as SLURM sets it); returns as `subprocess.run(...,
    capture_output=True, text=True)` would (a negative returncode: the signal that ended it).

    `piped_into`: a command its stdout is piped into, as `python -m MODULE ARGS | COMMAND` under `set -o pipefail`
    runs: the result's stdout is that command's, its returncode the module's, or where that is 0 the command's."""
    env = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory(prefix="mura_command_") as folder:
        stdout, stderr = Path(folder) / "stdout", Path(folder) / "stderr"
        for path in (stdout, stderr):
            path.touch()  # there to read even where the process ended before opening them
        # A pipe's write end travels to the process as a Connection (multiprocessing passes its descriptor)
        reading, writing = multiprocessing.Pipe(duplex=False) if piped_into else (None, None)
        process = _forkserver().Process(target=_run_as_main, args=(module, args, str(cwd), env, writing or str(stdout),
                                                                   str(stderr), cores))
        process.start()
        reader = None
        if piped_into:
            writing.close()  # the process holds the only write end: the reader sees the end of the output
            try:
                reader = subprocess.run(piped_into, stdin=reading.fileno(), capture_output=True, text=True, timeout=timeout)
            finally:
                reading.close()  # from here on the process writes into a closed pipe
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired([module, *args], timeout, stdout.read_bytes(), stderr.read_bytes())
        command = [sys.executable, "-m", module, *args]
        if reader is None:
            return subprocess.CompletedProcess(command, process.exitcode, stdout.read_text(errors="replace"),
                                               stderr.read_text(errors="replace"))
        return subprocess.CompletedProcess([*command, "|", *piped_into], process.exitcode or reader.returncode,
                                           reader.stdout, stderr.read_text(errors="replace") + reader.stderr)


def _run_as_main(module: str, args: list[str], cwd: str, env: dict[str, str], stdout: str | Connection, stderr: str,
                 cores: int | None) -> None:
    """In the forked process: set it up as the interpreter would have, run the module, exit as the interpreter would.
    `stdout`: a file, or the write end of a pipe."""
    if isinstance(stdout, Connection):
        os.dup2(stdout.fileno(), 1)
        stdout.close()
    else:
        _open_as(stdout, 1)
    _open_as(stderr, 2)
    # As Python sets them up on files: stdout block-buffered, stderr line-buffered (3.9+), both UTF-8 here
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="strict")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace",
                                  line_buffering=True)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    if cores is not None:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    sys.path[:0] = [cwd, *(entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry)]
    # The platform's default start method (multiprocessing made this process's the forkserver's: the command's data
    # loader workers would have started through a second forkserver, each one importing torch again)
    multiprocessing.set_start_method(None, force=True)
    sys.argv = [module, *args]  # runpy puts the module's file in argv[0], as `python -m` does
    code: int | str | None = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stopped:
        code = stopped.code
    except BaseException:
        traceback.print_exc()
        code = 1
    for thread in threading.enumerate():  # as the interpreter ends: non-daemon threads joined, then atexit handlers
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    # multiprocessing exits as the interpreter would: None 0, an int itself, a message on stderr and 1; stdout and
    # stderr flushed
    sys.exit(code)


def _open_as(path: str, fd: int) -> None:
    opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(opened, fd)
    os.close(opened)

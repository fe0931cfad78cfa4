"""Run many `panacea-pl` commands for the price of one interpreter start.

Each command of `panacea-pl` pays for Python, torch and Lightning to import (about 5 s on a
busy 2-core machine) before it does anything. `CLIServer` starts one fresh interpreter that
imports `panacea_pl.cli` (what the console script imports) and then, for each command, forks a
child that does what the console script does: `sys.argv = ["panacea-pl", *args]`,
`raise SystemExit(main())`, in the command's folder and environment, its stdout and stderr in a
log. What the interpreter printed while it imported is put in front of every command's log, so
a test sees all that a user would see.

    with CLIServer() as cli:
        code, out = cli.run(["fit", "--config", "a.yaml"], cwd=folder, env={"X": "1"})

The server is fresh Python with one thread when it forks, so the child is a clean process; a
`PYTHONPATH` in `env` is put on the child's `sys.path`, as a new interpreter would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class CLIServer:
    """A subprocess that forks one child per `panacea-pl` command (see the module docstring)."""

    def __init__(self, env: dict[str, str] | None = None, base_env: dict[str, str] | None = None):
        """`base_env` (default: `os.environ` now) with one thread and `env` on top: the
        server's environment, which every command inherits before its own `env`."""
        base = os.environ if base_env is None else base_env
        self.env = {**base, "OMP_NUM_THREADS": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.count = 0
        self.logs = Path(tempfile.mkdtemp(prefix="panacea_cli_"))

    def __enter__(self) -> CLIServer:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(self.logs / "import.log")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.env,
            text=True,
        )
        return self

    def __exit__(self, *exc) -> None:
        assert self.proc is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def run(
        self, args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300
    ) -> tuple[int, str]:
        """`panacea-pl ARGS` in `cwd` with `env` added: (exit status, stdout and stderr)."""
        assert self.proc is not None and self.proc.poll() is None, "the CLI server has exited"
        self.count += 1
        log = self.logs / f"command{self.count}.log"
        request = {"args": args, "cwd": str(cwd), "env": env or {}, "log": str(log)}
        request["timeout"] = timeout
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "the CLI server died"
        code = json.loads(reply)["code"]
        return code, log.read_text(errors="replace")


def _child(request: dict, import_log: str) -> None:
    """In the forked child: become `panacea-pl ARGS` and exit with its status."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the requests are the server's, not the command's
    os.close(null)
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, Path(import_log).read_bytes())
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(request["cwd"])
    os.environ.update(request["env"])
    extra = request["env"].get("PYTHONPATH")
    if extra:  # a new interpreter would put these before site-packages
        sys.path[1:1] = [p for p in extra.split(os.pathsep) if p]
    sys.argv = ["panacea-pl", *request["args"]]
    code = 1
    try:
        from panacea_pl.cli import main

        code = main()
    except SystemExit as err:  # what the interpreter does with `raise SystemExit(...)`
        if err.code is None:
            code = 0
        elif isinstance(err.code, int):
            code = err.code
        else:
            print(err.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _serve(import_log: str) -> None:
    replies = os.fdopen(os.dup(1), "w")
    fd = os.open(import_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    saved = os.dup(2)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.path[0] = os.path.dirname(sys.executable)  # the console script's folder, not tests/
    import panacea_pl.cli  # noqa: F401  (what the console script imports, once)

    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved, 2)  # the server's own errors go to the test's stderr
    os.close(fd)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, import_log)
        deadline = time.monotonic() + request["timeout"]
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code = os.waitstatus_to_exitcode(status)
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                with open(request["log"], "a") as log:
                    log.write(f"\n[CLIServer: killed after {request['timeout']} s]\n")
                code = -signal.SIGKILL
                break
            time.sleep(0.05)
        replies.write(json.dumps({"code": code}) + "\n")
        replies.flush()


if __name__ == "__main__":
    _serve(sys.argv[1])

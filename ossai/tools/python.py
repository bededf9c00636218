"""The `python` built-in tool: a stateful, sandboxed Python session per conversation, as gpt-oss was
trained to use it ("a stateful Jupyter notebook environment ... the drive at '/mnt/data' can be used to
save and persist user files").

Each session is one long-lived worker process running a small REPL (`_WORKER`, stdlib only). The parent
sends a cell as length-prefixed JSON on the worker's stdin; the worker runs it in a persistent `__main__`
namespace and answers on its stdout with what the cell wrote to stdout and stderr (file descriptors 1
and 2, so subprocesses' output is caught too), the repr of the cell's last expression, and the
traceback of an exception, limited to the cell's own frames. The model sees stdout, then stderr, then the
value or the traceback, cut to `max_output_chars` around a marker. `PythonTool.call(recipient, code,
session)` is the whole API, for the agent loop and `ossai tool python` alike.

Sandbox (`sandbox="bwrap"`, the default): bubblewrap builds a fresh root that holds read-only only
/usr, /bin, /lib*, /etc and the interpreter's own prefixes (a venv and its base Python, wherever they
live), a private /tmp and /dev/shm (tmpfs, `memory_mb` each), a minimal /dev, a /proc of its own, and the
session's directory, read-write, at /mnt/data (the working directory); nothing else (no /home, /root,
/var, /run, /sys, /opt). The user's home, the ossai home and `workdir_root` are never mounted; `hidden`
paths that fall inside a mounted one are covered (an empty tmpfs over a directory, an empty file over a
file). The sandbox has its own network namespace (loopback only: no network, not even the host's
127.0.0.1), pid, ipc and uts namespaces, a new terminal session, and dies with its parent. The
environment is a fixed minimal one (no API keys leak in). It needs bubblewrap 0.6 or newer (`--size`,
`--perms` on tmpfs); `--disable-userns` is added from 0.8 on.

Who the code runs as, and why: RLIMIT_NPROC is what contains a fork bomb without a cgroup (which a
desktop user cannot create without systemd delegation), and it is counted per user and ignored for
root. So:
- Run by a normal user, bwrap is unprivileged and makes a user namespace (`--unshare-user
  --disable-userns`); since Linux 5.14 processes are counted per (user namespace, uid), so the limit
  is per session even though every session is the same user.
- Run by root, an unprivileged bwrap could not reach an interpreter or directory under /root (mode
  700), and a user namespace made by root maps the sandbox onto uid 0, which would own /etc/shadow. So
  bwrap runs as root without a user namespace and leaves the worker only CAP_SETUID and CAP_SETGID;
  the worker's first act, before it reads any code, is to lower its limits and drop to a uid of its
  own, derived from the session's directory (`_UID_BASE` + 24 bits of a hash), with no groups and no
  capabilities left (bwrap also sets no_new_privs), and only then to enter /mnt/data, which is chowned
  to that uid, mode 700.

Limits, set by the worker on itself and inherited by everything it starts: RLIMIT_AS (`memory_mb` per
process: an allocation past it is a `MemoryError` and the session lives on), RLIMIT_FSIZE
(`max_file_mb`), RLIMIT_CORE 0, RLIMIT_NPROC (`max_procs` processes and threads, the worker's own three
included), and RLIMIT_CPU: before each cell the soft limit is set to the CPU used so far
plus `cpu_s`, and SIGXCPU interrupts the cell with a `KeyboardInterrupt` (variables kept); a forked child
gets `cpu_s` of its own and dies at it; the hard limit `cpu_total_s` caps any process for the session's
lifetime. The wall clock (`timeout_s` per call) is enforced by the parent: past it the whole sandbox is
killed (SIGKILL to bwrap and to the sandbox's pid 1, whose death takes the pid namespace along), and the
model is told that the session was stopped; files in /mnt/data outlive it, variables do not.
BLAS libraries are held to one thread and glibc to one malloc arena, because threads count against
`max_procs` and each arena reserves 64 MiB of the address space.

What is not limited: the total memory of a session is `max_procs` x `memory_mb` at worst (RLIMIT_AS is
per process), and the disk space /mnt/data may take is bounded per file only (`max_file_mb`); both need
cgroups or quotas, which ossai does not require. On kernels before 5.14, RLIMIT_NPROC is shared by all
sessions of a normal user.

`sandbox="none"` (an explicit opt-in, `--python-sandbox none`) runs the same worker without bubblewrap:
the rlimits and the private working directory (the real path, not /mnt/data) are kept, but there is no
filesystem, network or process isolation, the code runs as the ossai user, and as root RLIMIT_NPROC
does not apply at all.

Sessions idle for `idle_expiry_s` are killed and their directories removed, checked on each call;
`close()` does the same for all. Calls for one session are serialized; different sessions run in
parallel. Sandboxes are started from one long-lived thread because bwrap's die-with-parent
(PR_SET_PDEATHSIG) fires when the *thread* that started it exits, and callers' threads come and go.
"""

from __future__ import annotations

import ast
import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from openai_harmony import ToolNamespaceConfig

from ossai.errors import BadRequest
from ossai.tools.base import Tool, ToolResult

SANDBOX_DIR = "/mnt/data"  # where the session's directory appears inside the sandbox
EMPTY_OUTPUT = "[WARN] No output available. Use print() to output anything to stdout to receive the output"
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/nix", "/gnu")
_UID_BASE = 1_500_000_000  # root mode: per-session uids live in [base, base + 2**24), unused by real users
_START_TIMEOUT_S = 60.0  # a sandbox's first answer; generous for a loaded machine
_MAX_FRAME = 64 << 20  # a worker's answer is bounded by max_output_chars; anything bigger is a broken worker
_HEADER = struct.Struct(">I")

# Runs first: reads the worker's source as a frame on stdin, so that `ps` shows a short command line.
_BOOT = """import os, sys
def read(n):
    data = b""
    while len(data) < n:
        data += os.read(0, n - len(data)) or sys.exit(1)
    return data
exec(compile(read(int.from_bytes(read(4), "big")), "<ossai-worker>", "exec"))
"""

# The REPL inside the sandbox. Stdlib only, and it must not import ossai: the sandbox does not mount it.
_WORKER = r'''
import ast, json, linecache, os, queue, resource, signal, struct, sys, threading, traceback

CFG = json.loads(sys.argv[1])
PID = os.getpid()
HALF = max(CFG["max_output"] // 2 - 100, 100)  # bytes of output kept at each end of a stream
MARK = b"\x00\x1eossai-end-" + os.urandom(8).hex().encode() + b"\x1e\x00"  # ends a cell's output
HEADER = struct.Struct(">I")
STATE = {"in_cell": False}


def set_limits():
    mb = 1024 * 1024
    for res, value in ((resource.RLIMIT_AS, CFG["memory_mb"] * mb), (resource.RLIMIT_CORE, 0),
                       (resource.RLIMIT_FSIZE, CFG["max_file_mb"] * mb)):
        resource.setrlimit(res, (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (min(CFG["cpu_s"], CFG["cpu_total_s"]), CFG["cpu_total_s"]))
    nproc = CFG["max_procs"]
    if nproc is not None:
        if CFG["nproc_shared"]:  # no namespace of our own: the count includes the user's other processes
            nproc += count_tasks(os.getuid())
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    uid = CFG["uid"]
    if uid is not None:  # root mode: become the session's own user, which drops every capability
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if CFG["cwd"]:
        os.chdir(CFG["cwd"])  # only now: the directory is the session user's, mode 700


def count_tasks(uid):
    n = 0
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                n += int(fields["Threads"])
        except (OSError, ValueError, KeyError):
            pass
    return n


class Capture(threading.Thread):
    """Drains one output pipe so writers never block; keeps the head and tail of each cell's output."""

    def __init__(self, fd):
        super().__init__(daemon=True)
        self.fd, self.done = fd, queue.Queue()
        self.reset()

    def reset(self):
        self.head, self.tail, self.total = bytearray(), bytearray(), 0

    def add(self, data):
        self.total += len(data)
        room = HALF - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * HALF:
                del self.tail[:-HALF]

    def text(self):
        tail = bytes(self.tail[-HALF:])
        dropped = self.total - len(self.head) - len(tail)
        note = f"\n[... {dropped} bytes of output truncated ...]\n" if dropped else ""
        return self.head.decode("utf-8", "replace") + note + tail.decode("utf-8", "replace")

    def run(self):
        pending, keep = b"", len(MARK) - 1
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    return
                pending += chunk
                while (i := pending.find(MARK)) >= 0:
                    self.add(pending[:i])
                    pending = pending[i + len(MARK):]
                    self.done.put(self.text())
                    self.reset()
                if len(pending) > keep:
                    self.add(pending[:-keep])
                    pending = pending[-keep:]
            except MemoryError:  # the cell took all the address space: lose output, not the session
                pending = b""


def clip(text):
    if len(text) <= 2 * HALF:
        return text
    return text[:HALF] + f"\n[... {len(text) - 2 * HALF} characters truncated ...]\n" + text[-HALF:]


def send(fd, obj):
    data = json.dumps(obj).encode()
    data = HEADER.pack(len(data)) + data
    while data:
        data = data[os.write(fd, data):]


def recv(fd):
    def exactly(n):
        buf = b""
        while len(buf) < n:
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf
    header = exactly(4)
    body = header and exactly(HEADER.unpack(header)[0])
    return None if body is None else json.loads(body)


def on_xcpu(signum, frame):
    if STATE["in_cell"]:
        raise KeyboardInterrupt(f"the cell used more than its {CFG['cpu_s']} s of CPU time and was stopped")


def cell_traceback(exc):
    tb = exc.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell-"):
        tb = tb.tb_next  # the REPL's own frames (and asyncio's) are not the model's business
    last = tb
    while last is not None and last.tb_next is not None:
        if last.tb_next.tb_frame.f_code is on_xcpu.__code__:
            last.tb_next = None  # nor is the signal handler that raised
        else:
            last = last.tb_next
    return clip("".join(traceback.format_exception(type(exc), exc, tb)))


def child_exit(exc):
    """A process forked by a cell came back to the REPL: finish like a script would, never serve cells."""
    if exc is not None and not isinstance(exc, SystemExit):
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else int(exc is not None)
    os._exit(code)


LOOP = []


def evaluate(code, ns):
    result = eval(code, ns)
    if code.co_flags & 0x80:  # CO_COROUTINE: the cell used top-level await
        import asyncio
        if not LOOP:
            LOOP.append(asyncio.new_event_loop())
        result = LOOP[0].run_until_complete(result)
    return result


def run_cell(source, n, ns):
    name = f"<cell-{n}>"
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    try:
        tree = compile(source, name, "exec", ast.PyCF_ONLY_AST | flags)
    except BaseException as exc:  # SyntaxError, or null bytes, or a parser out of memory
        return {"error": clip("".join(traceback.format_exception_only(type(exc), exc))),
                "exception": type(exc).__name__}
    last = None
    if tree.body and isinstance(tree.body[-1], ast.Expr) and not source.rstrip().endswith(";"):
        last = ast.Expression(tree.body.pop().value)  # shown like Jupyter's Out[n], unless ended by ';'
    used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    hard = CFG["cpu_total_s"]
    resource.setrlimit(resource.RLIMIT_CPU, (min(int(used) + 1 + CFG["cpu_s"], hard), hard))
    reply = {"value": None, "error": None, "exception": None}
    STATE["in_cell"] = True
    try:
        evaluate(compile(tree, name, "exec", flags), ns)
        if last is not None:
            value = evaluate(compile(last, name, "eval", flags), ns)
            if value is not None:
                ns["_"] = value
                reply["value"] = clip(repr(value))
    except BaseException as exc:
        STATE["in_cell"] = False
        if os.getpid() != PID:
            child_exit(exc)
        reply["error"], reply["exception"] = cell_traceback(exc), type(exc).__name__
    finally:
        STATE["in_cell"] = False
    if os.getpid() != PID:
        child_exit(None)
    return reply


def after_fork_in_child():
    # A forked child must not speak the protocol (or keep the parent from seeing the worker die), and
    # gets CPU time of its own that ends it, instead of an interrupt meant for the worker's cells.
    for fd in CFG["_private_fds"]:
        try:
            os.close(fd)
        except OSError:
            pass
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    hard = CFG["cpu_total_s"]
    resource.setrlimit(resource.RLIMIT_CPU, (min(CFG["cpu_s"], hard), hard))


def main():
    set_limits()
    sys.dont_write_bytecode = True
    sys.argv = [""]
    sys.path.insert(0, "")  # modules the code writes to its directory import, as in a notebook
    req, resp = os.dup(0), os.dup(1)  # the protocol moves off 0 and 1; dups are close-on-exec
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
    CFG["_private_fds"] = [req, resp]
    captures = Capture(out_r), Capture(err_r)
    threading.stack_size(256 * 1024)  # their address space counts against RLIMIT_AS
    for c in captures:
        c.start()
    threading.stack_size(0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    streams = [None, None]
    module = type(sys)("__main__")
    sys.modules["__main__"] = module  # so pickle and multiprocessing find the cells' classes
    ns = module.__dict__
    signal.signal(signal.SIGXCPU, on_xcpu)
    os.register_at_fork(after_in_child=after_fork_in_child)
    send(resp, {"ready": True})
    n = 0
    while (msg := recv(req)) is not None:
        n += 1
        os.dup2(out_w, 1)  # undo whatever the last cell did to its output
        os.dup2(err_w, 2)
        for i, fd in enumerate((1, 2)):
            if streams[i] is None or streams[i].closed:
                streams[i] = open(fd, "w", encoding="utf-8", errors="backslashreplace", buffering=1,
                                  closefd=False)
        sys.stdout, sys.stderr = streams
        reply = run_cell(msg["code"], n, ns)
        for stream in {id(s): s for s in (sys.stdout, sys.stderr, *streams)}.values():
            try:
                stream.flush()
            except Exception:
                pass
        sys.stdout, sys.stderr = streams
        for name, capture, fd in (("stdout", captures[0], out_w), ("stderr", captures[1], err_w)):
            os.write(fd, MARK)  # everything the cell wrote is in the pipe before this
            try:
                reply[name] = capture.done.get(timeout=30)
            except queue.Empty:
                reply[name] = "[output lost]"
        send(resp, reply)


main()
'''


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _dir_name(session: str) -> str:
    """A readable, unique and safe directory name for any session id."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", session)[:48].strip(".-") or "session"
    return f"{readable}-{_hash(session)[:12]}"


def _inside(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def _strip_fence(code: str) -> str:
    """The model sometimes wraps its code in a markdown fence, which would be a syntax error."""
    stripped = code.strip()
    if stripped.startswith("```") and stripped.endswith("```") and "\n" in stripped:
        return stripped[stripped.index("\n") + 1 : -3]
    return code


def _remove_tree(path: Path) -> None:
    """Remove a session directory even if its code took the permissions away (never following links)."""

    def fix(func: Any, name: str, _exc: Any) -> None:
        parent = os.path.dirname(name)
        with contextlib.suppress(OSError):  # what still fails stays behind, rather than fail the call
            if not os.path.islink(parent):
                os.chmod(parent, 0o700)
            func(name)

    if path.exists():
        shutil.rmtree(path, onerror=fix)


def _describe_exit(returncode: int | None, sandboxed: bool) -> str:
    """Why a worker ended, from its exit status (bwrap reports a signal as 128 + n)."""
    if returncode is None:
        return "its process stopped answering"
    signum = -returncode if returncode < 0 else returncode - 128 if sandboxed and returncode > 128 else 0
    if signum == signal.SIGKILL:
        return "its process was killed (SIGKILL), usually for going over a CPU or memory limit"
    if signum == signal.SIGXCPU:
        return "its process used up its CPU time"
    if signum == signal.SIGSEGV:
        return "the interpreter crashed (segmentation fault)"
    if signum > 0:
        return f"its process was killed by {signal.Signals(signum).name}"
    return f"its process exited with status {returncode}"


class _Dead(Exception):
    """The worker went away or could not start; the message says why, in words for the model."""


class _Worker:
    """One worker process (bwrap with the REPL inside, or the bare REPL) and its framed pipes."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr: Any, sandboxed: bool):
        assert proc.stdin is not None and proc.stdout is not None
        self.proc = proc
        self.stderr = stderr  # a temporary file: what bwrap or Python said before the protocol began
        self.sandboxed = sandboxed
        self._lock = threading.Lock()  # kill versus reap: never signal a pid that was reaped (and reused)
        self._in, self._out = proc.stdin.fileno(), proc.stdout.fileno()
        self._inits: list[int] = []  # the sandbox's pid 1, seen from here
        os.set_blocking(self._in, False)  # writes honour the deadline too

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, obj: dict[str, Any] | bytes, deadline: float, late: str) -> None:
        """One frame: JSON for an object, or raw bytes (the worker's source, for the boot code)."""
        data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        view = memoryview(_HEADER.pack(len(data)) + data)
        while view:
            self._wait(select.POLLOUT, self._in, deadline, late)
            try:
                view = view[os.write(self._in, view) :]
            except BlockingIOError:
                continue
            except OSError:
                return  # it died: receiving says how

    def receive(self, deadline: float, late: str) -> dict[str, Any]:
        (size,) = _HEADER.unpack(self._read(_HEADER.size, deadline, late))
        if size > _MAX_FRAME:
            raise _Dead("the worker sent a malformed answer")
        try:
            reply = json.loads(self._read(size, deadline, late))
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise _Dead("the worker sent a malformed answer")
        return reply

    def _read(self, n: int, deadline: float, late: str) -> bytes:
        buf = b""
        while len(buf) < n:
            self._wait(select.POLLIN, self._out, deadline, late)
            chunk = os.read(self._out, n - len(buf))
            if not chunk:
                raise _Dead(self.why_dead())
            buf += chunk
        return buf

    @staticmethod
    def _wait(event: int, fd: int, deadline: float, late: str) -> None:
        poller = select.poll()
        poller.register(fd, event)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Dead(late)
            if poller.poll(min(left, 1.0) * 1000):
                return  # ready, or hung up: the read or write that follows tells which

    def why_dead(self) -> str:
        try:
            returncode: int | None = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            returncode = None
        why = _describe_exit(returncode, self.sandboxed)
        if not self.stderr.closed:
            self.stderr.seek(0)
            said = self.stderr.read(4000).decode("utf-8", "replace").strip()
            if said:
                why += f" ({said.splitlines()[-1]})"
        return why

    def kill(self) -> None:
        """SIGKILL to the worker's process group and, with bwrap, to the sandbox's pid 1: when a pid
        namespace's init dies the kernel kills everything else in it. Safe from any thread."""
        with self._lock:
            if self.proc.poll() is not None:
                return  # reaped: its pid may belong to someone else now
            if self.sandboxed and not self._inits:
                self._inits = _children(self.proc.pid)
            for pid in self._inits:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def close(self) -> None:
        """Kill, reap, and wait until the pid namespace is gone (its init outlives every other member)."""
        self.kill()
        with self._lock, contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(_running(pid) for pid in self._inits) and time.monotonic() < deadline:
            time.sleep(0.01)
        for f in (self.proc.stdin, self.proc.stdout, self.stderr):
            with contextlib.suppress(OSError):
                f.close()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (a dead pid 1 waits there for the host's init)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


@dataclass(eq=False)
class _Session:
    key: str
    workdir: Path
    uid: int | None  # root mode: the uid the worker drops to
    lock: threading.Lock = field(default_factory=threading.Lock)  # one call at a time
    worker: _Worker | None = None
    starts: int = 0
    last_used: float = field(default_factory=time.monotonic)
    closed: bool = False


class PythonTool(Tool):
    """The `python` built-in: one sandboxed, stateful interpreter per session (see the module docstring).

    `call(recipient, code, session)` runs `code` in the session's interpreter, starting it if needed, and
    returns what the model sees (`recipient` is not used: there is one python tool). `data` holds `code`,
    `output` (the same text), `session`, `stdout`, `stderr`, `value` (the last expression's repr),
    `exception` (its class name, or None), `restarted` (this call ran in a new interpreter after an
    earlier one of the session ended, so variables were lost) and `workdir` (the session's directory on
    the host). `error` is set when the code raised, the session died or the sandbox failed to start.
    """

    name = "python"

    def __init__(
        self,
        workdir_root: Path,
        *,
        sandbox: Literal["bwrap", "none"] = "bwrap",
        hidden: Sequence[Path] = (),
        timeout_s: float = 120.0,
        cpu_s: int = 60,
        cpu_total_s: int = 3600,
        memory_mb: int = 1024,
        max_file_mb: int = 64,
        max_procs: int = 64,
        max_output_chars: int = 16_000,
        idle_expiry_s: float = 900.0,
        max_sessions: int = 32,
        python: str | None = None,
    ):
        """`workdir_root` holds one directory per session (it should be private to ossai); `hidden` are
        directories or files the code must not see (the ossai home; the user's home always is). Limits:
        `timeout_s` of wall clock per call, `cpu_s` of CPU per cell and `cpu_total_s` per process,
        `memory_mb` of address space per process, `max_file_mb` per file written, `max_procs`
        processes and threads, `max_output_chars` of text back to the model. `python` is the interpreter
        to run inside (default: this one), e.g. a venv with numpy and pandas for the model."""
        if sandbox not in ("bwrap", "none"):
            raise BadRequest(f"the python sandbox must be 'bwrap' or 'none', not {sandbox!r}")
        if min(timeout_s, cpu_s, memory_mb, max_file_mb, max_procs, max_output_chars) <= 0:
            raise BadRequest("the python tool's limits must all be positive")
        self._bwrap, self._bwrap_help = _find_bwrap() if sandbox == "bwrap" else (None, "")
        self.workdir_root = Path(workdir_root).absolute()
        self.sandbox = sandbox
        self.timeout_s = timeout_s
        self.idle_expiry_s = idle_expiry_s
        self.max_sessions = max_sessions
        self.max_output_chars = max_output_chars
        self._root = os.geteuid() == 0
        self._python = python or sys.executable
        self._runtime = _runtime_dirs(python)
        hide = (Path(p).absolute() for p in (*hidden, Path.home(), self.workdir_root))
        self._hidden = [p for p in hide if p != Path("/")]  # a HOME of / hides nothing rather than all
        self._limits: dict[str, Any] = {
            "cpu_s": int(cpu_s),
            "cpu_total_s": int(max(cpu_total_s, cpu_s)),
            "memory_mb": int(memory_mb),
            "max_file_mb": int(max_file_mb),
            "max_procs": int(max_procs),
            "max_output": int(max_output_chars),
        }
        self._sessions: dict[str, _Session] = {}
        self._lock = threading.Lock()
        self._closed = False
        # One long-lived thread starts every sandbox: see the module docstring (PR_SET_PDEATHSIG).
        self._spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ossai-python-spawn")

    def namespace(self) -> ToolNamespaceConfig:
        # The description gpt-oss was trained with, word for word (it says 120 s whatever `timeout_s`).
        return ToolNamespaceConfig.python()

    def call(self, recipient: str, arguments: str, session: str) -> ToolResult:
        """Run `arguments` (Python source) in `session`'s interpreter; see the class docstring."""
        code = _strip_fence(arguments)
        self._expire_idle()
        while True:
            s = self._session(session)
            if s is None:
                return ToolResult("Error: the python tool has been shut down.", error=True)
            with s.lock:
                if s.closed:  # expired between the lookup and the lock: take a fresh one
                    continue
                try:
                    return self._run(s, code)
                finally:
                    s.last_used = time.monotonic()

    def close(self) -> None:
        """Kill every session and remove its directory."""
        with self._lock:
            self._closed = True
            sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            s.closed = True
            if (worker := s.worker) is not None:
                worker.kill()  # a call in flight sees its worker die and returns
        for s in sessions:
            with s.lock:
                self._stop(s)
                _remove_tree(s.workdir)
        self._spawner.shutdown(wait=False)

    # Sessions

    def _session(self, key: str) -> _Session | None:
        with self._lock:
            if self._closed:
                return None
            s = self._sessions.get(key)
            if s is None:
                workdir = self.workdir_root / _dir_name(key)
                uid = None
                if self._root and self.sandbox == "bwrap":
                    uid = _UID_BASE + int(_hash(str(workdir))[:6], 16)
                s = self._sessions[key] = _Session(key, workdir, uid)
            return s

    def _expire_idle(self) -> None:
        """Retire sessions idle past the expiry, and the least recently used beyond `max_sessions` (each
        holds a sandboxed interpreter, so a server must not keep one per request it ever served)."""
        now = time.monotonic()
        with self._lock:
            by_age = sorted(self._sessions.values(), key=lambda s: s.last_used)
            excess = len(by_age) - self.max_sessions + 1  # room for the session about to be used
            stale = [s for s in by_age if now - s.last_used > self.idle_expiry_s]
        for s in stale:  # skipped if it was used since it was listed
            self._retire(s, lambda s=s: now - s.last_used <= self.idle_expiry_s)
        for s in by_age[: max(0, excess)]:
            self._retire(s, lambda: False)

    def end_session(self, session: str) -> None:
        """Kill a session's interpreter and remove its files now (a conversation that is over)."""
        with self._lock:
            s = self._sessions.get(session)
        if s is not None:
            self._retire(s, lambda: False)

    def _retire(self, s: _Session, keep: Callable[[], bool]) -> None:
        if not s.lock.acquire(blocking=False):
            return  # a call is running: not idle
        try:
            if s.closed or keep():
                return
            s.closed = True
            with self._lock:
                if self._sessions.get(s.key) is s:
                    del self._sessions[s.key]
            self._stop(s)
            _remove_tree(s.workdir)
        finally:
            s.lock.release()

    @staticmethod
    def _stop(s: _Session) -> None:
        worker, s.worker = s.worker, None
        if worker is not None:
            worker.close()

    def _run(self, s: _Session, code: str) -> ToolResult:
        notes = []
        if s.worker is not None and not s.worker.alive():
            why = s.worker.why_dead()
            self._stop(s)
            notes.append(f"[The python session had stopped ({why}); this code ran in a new one.]")
        if s.worker is None:
            try:
                s.worker = self._start(s)
            except _Dead as exc:
                return self._result(code, s, f"Error: the python sandbox could not start: {exc}.", True)
        worker, deadline = s.worker, time.monotonic() + self.timeout_s
        late = f"the code ran past the {self.timeout_s:g} s time limit"
        try:
            worker.send({"code": code}, deadline, late)
            reply = worker.receive(deadline, late)
        except _Dead as exc:
            self._stop(s)
            text = (
                f"Error: the python session was stopped: {exc}. Its variables and imports are lost (files in "
                f"{self._drive(s)} are kept); the next call starts a new session."
            )
            return self._result(code, s, text, True)
        text = self._compose(notes, reply)
        return self._result(code, s, text, reply.get("error") is not None, reply=reply)

    def _drive(self, s: _Session) -> str:
        return SANDBOX_DIR if self.sandbox == "bwrap" else str(s.workdir)

    def _compose(self, notes: list[str], reply: dict[str, Any]) -> str:
        """stdout, stderr, then the traceback or the last expression's value; cut in the middle if long."""
        outputs = [reply.get("stdout"), reply.get("stderr"), reply.get("error") or reply.get("value")]
        parts = [p if p.endswith("\n") else p + "\n" for p in (*notes, *outputs) if p]
        text = "".join(parts) if any(outputs) else "".join(parts) + EMPTY_OUTPUT
        limit = self.max_output_chars
        if len(text) > limit:
            half = max(limit // 2 - 40, 1)
            text = f"{text[:half]}\n[... {len(text) - 2 * half} characters truncated ...]\n{text[-half:]}"
        return text

    def _result(
        self, code: str, s: _Session, text: str, error: bool, *, reply: dict[str, Any] | None = None
    ) -> ToolResult:
        reply = reply or {}
        data = {
            "code": code,
            "output": text,
            "session": s.key,
            "stdout": reply.get("stdout", ""),
            "stderr": reply.get("stderr", ""),
            "value": reply.get("value"),
            "exception": reply.get("exception"),
            "restarted": s.starts > 1,
            "workdir": str(s.workdir),
        }
        return ToolResult(text, error=error, data=data)

    # Worker processes

    def _start(self, s: _Session) -> _Worker:
        try:
            s.workdir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            s.workdir.mkdir(mode=0o700, exist_ok=True)
            (self.workdir_root / ".empty").touch(mode=0o444)
            if s.uid is not None and s.workdir.stat().st_uid != s.uid:
                os.chown(s.workdir, s.uid, s.uid)
        except OSError as exc:
            raise _Dead(f"its directory {s.workdir} could not be made ({exc.strerror})") from exc
        sandboxed = self.sandbox == "bwrap"
        config = dict(self._limits, uid=s.uid, session=s.workdir.name, nproc_shared=not sandboxed)
        config["cwd"] = SANDBOX_DIR if sandboxed else None
        if self.sandbox == "none" and self._root:
            config["max_procs"] = None  # RLIMIT_NPROC does not apply to root: nothing to set
        argv = [self._python, "-I", "-B", "-c", _BOOT, json.dumps(config)]
        if self.sandbox == "bwrap":
            argv = self._bwrap_argv(s.workdir) + argv
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 (the worker owns it and closes it)
        try:
            proc = self._spawner.submit(self._popen, argv, s, stderr).result()
        except (OSError, RuntimeError) as exc:  # RuntimeError: the tool is closing
            stderr.close()
            raise _Dead(str(exc)) from exc
        worker = _Worker(proc, stderr, self.sandbox == "bwrap")
        try:
            deadline, late = time.monotonic() + _START_TIMEOUT_S, "it did not answer in time"
            worker.send(_WORKER.encode(), deadline, late)
            hello = worker.receive(deadline, late)
            if not hello.get("ready"):
                raise _Dead("the worker sent an unexpected greeting")
        except _Dead:
            worker.close()
            raise
        s.starts += 1
        return worker

    def _popen(self, argv: list[str], s: _Session, stderr: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            bufsize=0,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=s.workdir if self.sandbox == "none" else "/",
            env=self._env(s),
            start_new_session=True,  # its own process group, killed as one
        )

    def _env(self, s: _Session) -> dict[str, str]:
        """A fixed environment: nothing of ossai's (API keys, tokens) leaks into the sandbox."""
        return {
            "PATH": f"{os.path.dirname(self._python)}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp" if self.sandbox == "bwrap" else str(s.workdir),
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "USER": "sandbox",  # the root mode's uid has no passwd entry; getpass reads these first
            "LOGNAME": "sandbox",
            "MPLBACKEND": "Agg",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "MALLOC_ARENA_MAX": "1",
        }

    def _bwrap_argv(self, workdir: Path) -> list[str]:
        assert self._bwrap is not None
        empty = self.workdir_root / ".empty"  # what a hidden file shows; made by _start
        argv = [self._bwrap, "--die-with-parent", "--new-session"]
        if self._root:  # see the module docstring: no user namespace, the worker drops to its own uid
            argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
            argv += ["--unshare-cgroup-try", "--cap-drop", "ALL", "--cap-add", "CAP_SETUID"]
            argv += ["--cap-add", "CAP_SETGID"]  # all the worker needs before it drops them with its uid
        else:
            argv += ["--unshare-all", "--unshare-user"]
            if "--disable-userns" in self._bwrap_help:  # bubblewrap 0.8+
                argv.append("--disable-userns")
        mounted: list[Path] = []
        for name in SYSTEM_DIRS:
            path = Path(name)
            if any(_inside(path, h) for h in self._hidden):
                continue
            if path.is_symlink():
                argv += ["--symlink", os.readlink(path), name]
            elif path.is_dir():
                argv += ["--ro-bind", name, name]
                mounted.append(path)
        # the private /tmp and /dev/shm first: an interpreter (a virtualenv) under /tmp is bound on top
        size = str(self._limits["memory_mb"] << 20)
        argv += ["--proc", "/proc", "--dev", "/dev"]
        argv += ["--perms", "1777", "--size", size, "--tmpfs", "/tmp"]
        argv += ["--perms", "1777", "--size", size, "--tmpfs", "/dev/shm"]
        made: set[Path] = {Path("/tmp"), Path("/dev"), Path("/dev/shm")}  # keep their modes
        for path in sorted(self._runtime, key=lambda p: len(p.parts)):
            if any(_inside(path, m) for m in mounted):
                continue
            for parent in reversed(path.parents):
                if parent != Path("/") and parent not in made:
                    argv += ["--perms", "0755", "--dir", str(parent)]  # bwrap would make them 0700
                    made.add(parent)
            argv += ["--ro-bind", str(path), str(path)]
            mounted.append(path)
        for path in self._hidden:  # only what lies inside a mount is visible, and so needs covering
            if path.exists() and any(_inside(path, m) and path != m for m in mounted):
                # an empty file, not /dev/null: devices do not open on bwrap's nodev mounts
                argv += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", str(empty), str(path)]
        argv += ["--perms", "0755", "--dir", os.path.dirname(SANDBOX_DIR)]
        argv += ["--bind", str(workdir), SANDBOX_DIR]
        argv += ["--remount-ro", "/", "--chdir", "/", "--"]  # the worker enters /mnt/data as its user
        return argv


def _find_bwrap() -> tuple[str, str]:
    """bwrap's path and its --help text (which options it has); BadRequest when it is missing or old."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise BadRequest(
            "The python tool runs code in a bubblewrap sandbox, but `bwrap` is not installed: install it "
            "(`apt-get install bubblewrap`, `dnf install bubblewrap`) or opt in to running code without "
            "isolation with `--python-sandbox none`."
        )
    try:
        help_text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BadRequest(f"The python tool could not run {bwrap} ({exc}).") from exc
    if "--size" not in help_text:
        raise BadRequest(
            f"The bubblewrap at {bwrap} is too old for the python tool, which needs version 0.6 or newer; "
            "upgrade it or opt in to running code without isolation with `--python-sandbox none`."
        )
    return bwrap, help_text


def _runtime_dirs(python: str | None) -> list[Path]:
    """The interpreter's prefixes (a venv and its base Python, wherever they are), for the sandbox."""
    if python is None:
        prefixes = [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix]
    else:
        probe = "import sys; print([sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix])"
        try:
            out = subprocess.run([python, "-I", "-c", probe], capture_output=True, text=True, timeout=60)
            prefixes = ast.literal_eval(out.stdout.strip())
        except (OSError, ValueError, SyntaxError, subprocess.TimeoutExpired) as exc:
            raise BadRequest(f"The python interpreter {python} could not be run ({exc}).") from exc
    exe = python or sys.executable
    found = [Path(p) for p in prefixes] + [Path(exe).parent, Path(os.path.realpath(exe)).parent.parent]
    found += [Path(os.path.realpath(p)) for p in found]
    return [p.absolute() for p in dict.fromkeys(found) if p.is_dir() and str(p) != "/"]

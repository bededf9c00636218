"""The python tool against real bubblewrap sandboxes: notebook behaviour, limits, and escapes contained."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ossai.errors import BadRequest
from ossai.tools.base import ToolResult
from ossai.tools.python import EMPTY_OUTPUT, PythonTool

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

Make = Callable[..., PythonTool]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    """PythonTool(tmp_path / "py", **limits), closed after the test."""
    made: list[PythonTool] = []

    def build(**kwargs) -> PythonTool:
        made.append(PythonTool(tmp_path / "py", **kwargs))
        return made[-1]

    yield build
    for tool in made:
        tool.close()


@pytest.fixture
def tool(make: Make) -> PythonTool:
    return make(timeout_s=20)


def run(tool: PythonTool, code: str, session: str = "s") -> ToolResult:
    return tool.call("python", code, session)


def processes(result: ToolResult) -> list[int]:
    """Live processes of the result's session: bwrap and the worker carry its directory in their argv."""
    marker = Path(result.data["workdir"]).name.encode()
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


def assert_alive(tool: PythonTool, session: str = "s") -> None:
    result = run(tool, "print(6 * 7)", session)
    assert (result.text, result.error) == ("42\n", False)


# Notebook behaviour


def test_state_persists_across_calls(tool):
    first = run(tool, "import math\nx = 20\nopen('notes.txt', 'w').write('kept')\nprint('set')")
    assert first.text == "set\n" and not first.error
    second = run(tool, "print(x + 1, math.sqrt(16), open('notes.txt').read())")
    assert second.text == "21 4.0 kept\n"
    assert (Path(second.data["workdir"]) / "notes.txt").read_text() == "kept"  # the host sees /mnt/data
    cwd = run(tool, "import os; os.getcwd()")
    assert cwd.text == "'/mnt/data'\n"
    run(tool, "open('helper.py', 'w').write('def double(v):\\n    return 2 * v\\n')")
    assert run(tool, "from helper import double; double(x)").text == "40\n"
    assert second.data["session"] == "s" and second.data["restarted"] is False


def test_last_expression_is_shown_after_the_output(tool):
    result = run(tool, "import sys\nprint('out')\nprint('err', file=sys.stderr)\n{'a': [1, 2]}")
    assert result.text == "out\nerr\n{'a': [1, 2]}\n"
    assert result.data["value"] == "{'a': [1, 2]}" and result.data["stdout"] == "out\n"
    assert run(tool, "y = 3\ny * 2;").text == EMPTY_OUTPUT  # a trailing ';' hides it, as in Jupyter
    assert run(tool, "_").text == "{'a': [1, 2]}\n"
    assert run(tool, "import subprocess; subprocess.run(['echo', 'child']).returncode").text == "child\n0\n"


def test_exception_shows_the_cells_traceback_and_the_session_goes_on(tool):
    result = run(tool, "def f():\n    return 1 / 0\n\nz = 5\nf()")
    assert result.error and result.data["exception"] == "ZeroDivisionError"
    assert 'File "<cell-1>", line 5, in <module>' in result.text
    assert "return 1 / 0" in result.text and result.text.rstrip().endswith(
        "ZeroDivisionError: division by zero"
    )
    assert "<string>" not in result.text  # the REPL's own frames are not shown
    syntax = run(tool, "z = (")
    assert syntax.error and "SyntaxError" in syntax.text
    assert run(tool, "print(z)").text == "5\n"


def test_empty_output_and_code_fences(tool):
    assert run(tool, "x = 1").text == EMPTY_OUTPUT
    assert run(tool, "```python\nprint(x)\n```").text == "1\n"


def test_sessions_are_separate_and_run_in_parallel(tool):
    run(tool, "open('mine.txt', 'w').write('a'); who = 'a'", "a")
    other = run(tool, "import os; print(os.listdir('.'), os.listdir('/mnt')); who", "b")
    assert other.text.startswith("[] ['data']\n") and "NameError" in other.text
    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(tool, "import time; time.sleep(2)", s)) for s in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started < 3.8  # not one after the other


def test_idle_sessions_expire_and_close_cleans_up(make):
    tool = make(idle_expiry_s=1.0)
    first = run(tool, "x = 1", "old")
    workdir = Path(first.data["workdir"])
    assert workdir.is_dir() and processes(first)
    time.sleep(1.5)
    other = run(tool, "print('hi')", "new")
    assert not workdir.exists() and not processes(first)
    assert "NameError" in run(tool, "x", "old").text  # a fresh session
    tool.close()
    assert not Path(other.data["workdir"]).exists() and not processes(other)
    closed = run(tool, "print(1)", "new")
    assert closed.error and "shut down" in closed.text


# Limits


def test_wall_clock_timeout_kills_the_session_and_the_next_call_starts_afresh(make):
    tool = make(timeout_s=2)
    run(tool, "x = 1")
    started = time.monotonic()
    result = run(tool, "import time\nprint('before')\ntime.sleep(60)")
    assert time.monotonic() - started < 10
    assert result.error and "2 s time limit" in result.text and "variables" in result.text
    assert not processes(result)
    after = run(tool, "print('x' in globals())")
    assert after.text == "False\n" and after.data["restarted"] is True


def test_busy_loop_is_stopped_by_the_cpu_limit_keeping_the_variables(make):
    tool = make(timeout_s=30, cpu_s=1)
    run(tool, "kept = 'yes'")
    result = run(tool, "while True:\n    pass")
    assert result.error and result.data["exception"] == "KeyboardInterrupt"
    assert "1 s of CPU time" in result.text
    assert run(tool, "print(kept)").text == "yes\n"


def test_busy_loop_that_ignores_interrupts_is_killed_at_the_time_limit(make):
    tool = make(timeout_s=2, cpu_s=60)
    result = run(tool, "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass")
    assert result.error and "time limit" in result.text and not processes(result)
    assert_alive(tool)


def test_memory_limit_raises_memory_error_and_the_session_survives(make):
    tool = make(memory_mb=256)
    run(tool, "a = 7")
    result = run(tool, "b = bytearray(1 << 30)")
    assert result.error and result.data["exception"] == "MemoryError"
    assert run(tool, "c = bytearray(64 << 20); print(a, len(c) >> 20)").text == "7 64\n"


def test_file_size_limit(make):
    tool = make(max_file_mb=1)
    result = run(tool, "open('big', 'wb').write(b'x' * (2 << 20))")
    assert result.error and "File too large" in result.text
    assert_alive(tool)


def test_long_output_is_cut_in_the_middle(make):
    tool = make(max_output_chars=2000)
    result = run(tool, "for i in range(200_000):\n    print(i)")
    assert len(result.text) <= 2100 and "truncated" in result.text
    assert result.text.startswith("0\n1\n2\n") and result.text.endswith("199999\n")
    huge = run(tool, "'y' * 1_000_000")
    assert len(huge.text) <= 2100 and "truncated" in huge.text


def test_a_dead_worker_is_reported_and_replaced(tool):
    run(tool, "x = 1")
    crashed = run(tool, "import ctypes; ctypes.string_at(0)")
    assert crashed.error and "segmentation fault" in crashed.text and "next call" in crashed.text
    assert_alive(tool)
    exited = run(tool, "import os; os._exit(3)")
    assert exited.error and "status 3" in exited.text
    # dying between calls: the next call says so and runs in a new session
    run(
        tool,
        "import os, threading, time\nthreading.Thread(target=lambda: (time.sleep(0.2), os._exit(0))).start()",
    )
    time.sleep(1.0)
    after = run(tool, "print('ok')")
    assert after.text.startswith("[The python session had stopped") and after.text.endswith("ok\n")
    assert after.data["restarted"] is True


# Escapes


def test_home_hidden_and_workdir_root_are_not_visible(make, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_text("SECRET-KEY")
    monkeypatch.setenv("HOME", str(home))
    # and, inside a mounted tree, a hidden file and directory are covered
    etc_dir = next(
        (d for d in map(Path, ("/etc/default", "/etc/skel")) if d.is_dir() and any(d.iterdir())), None
    )
    tool = make(hidden=[Path("/etc/passwd"), *([etc_dir] if etc_dir else [])])
    run(tool, "open('mine.txt', 'w').write('a')", "other")
    code = f"""
import os
for path in [{str(home / ".ssh" / "id_rsa")!r}, {str(tmp_path)!r}, {str(tmp_path / "py")!r}]:
    try:
        print(open(path).read() if os.path.isfile(path) else os.listdir(path))
    except OSError as e:
        print(type(e).__name__)
print(repr(open('/etc/passwd').read()))
print({str(etc_dir)!r} == 'None' or os.listdir({str(etc_dir)!r}) == [])
"""
    result = run(tool, code)
    assert "SECRET" not in result.text and "mine.txt" not in result.text
    assert result.text == "FileNotFoundError\nFileNotFoundError\nFileNotFoundError\n''\nTrue\n"


def test_writes_outside_the_working_directory_fail(tool):
    probe = f"ossai-probe-{uuid.uuid4().hex}"
    code = f"""
failed = []
for path in ['/etc/{probe}', '/usr/{probe}', '/{probe}', '/mnt/{probe}', '/proc/{probe}', '/dev/{probe}']:
    try:
        open(path, 'w').write('x')
    except OSError:
        failed.append(path)
open('/tmp/{probe}', 'w').write('private tmp')
print(len(failed))
"""
    assert run(tool, code).text == "6\n"
    assert not Path(f"/tmp/{probe}").exists()  # the sandbox's /tmp is its own
    assert not any(Path(d, probe).exists() for d in ("/etc", "/usr", "/"))
    assert_alive(tool)


def test_no_network_even_to_the_hosts_loopback(tool):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    code = f"""
import socket
for address in [('127.0.0.1', {port}), ('1.1.1.1', 53)]:
    try:
        socket.create_connection(address, timeout=5)
        print('connected')
    except OSError as e:
        print(type(e).__name__)
"""
    try:
        result = run(tool, code)
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever arrived
    finally:
        server.close()
    assert result.text == "ConnectionRefusedError\nOSError\n"
    assert_alive(tool)


def test_fork_bomb_is_contained_and_killed(make):
    tool = make(timeout_s=3, max_procs=12)
    first = run(tool, "print('ready')")
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], len(processes(first)))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        bomb = run(
            tool, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
        )
    finally:
        stop.set()
        watcher.join()
    assert bomb.error and "time limit" in bomb.text
    assert 3 <= peak[0] <= 12  # bwrap, its pid 1 and at most max_procs tasks of the session's user
    assert not processes(first)
    assert_alive(tool)


# Without bwrap


def test_sandbox_none_runs_code_in_the_private_directory(make):
    tool = make(sandbox="none", timeout_s=2)
    result = run(tool, "import os\nx = 2\nos.getcwd()")
    assert result.text == repr(result.data["workdir"]) + "\n"
    assert run(tool, "print(x * 21)").text == "42\n"
    timed_out = run(tool, "import time; time.sleep(30)")
    assert timed_out.error and "time limit" in timed_out.text
    assert_alive(tool)


def test_missing_bwrap_is_refused_with_the_opt_in_hint(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(BadRequest, match="--python-sandbox none") as caught:
        PythonTool(tmp_path / "py")
    assert "bubblewrap" in str(caught.value)
    PythonTool(tmp_path / "py", sandbox="none").close()  # the explicit opt-in needs no bwrap

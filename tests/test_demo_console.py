"""``fedgov demo --console``'s console part (fedgov.demo._serve_console) as a real process: it prints the
analyst's sign-in URL, serves the Federation page of the running federation, and Ctrl-C (SIGINT to the
demo's process, as a terminal sends it: the federation's processes run in their own sessions) stops the
console and every process of the federation.

The demo's own six-department story takes minutes; here ``_serve_console`` runs on the small real
federation of tests/console_support.py (coordinator, civil_affairs, tax, arbiter as processes).
"""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.console_support import URL_RE

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import sys
from pathlib import Path
from fedgov.demo import Story, _serve_console
from tests.console_support import console_federation

with console_federation(Path(sys.argv[1])) as fed:
    _serve_console(fed, Story(False))
print("demo exited", flush=True)
"""


def _descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid`` (from /proc/<pid>/task/*/children)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                continue
            for k in kids:
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_demo_console_serves_the_federation_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in proc.stdout or ()),
                     daemon=True).start()
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None:
            assert proc.poll() is None and time.monotonic() < deadline, "\n".join(lines[-30:])
            url = next((m.group(0) for line in list(lines) if (m := URL_RE.search(line))), None)
            time.sleep(0.1)
        assert any("The federation stays up" in line for line in lines)
        children = _descendants(proc.pid)
        assert len(children) >= 4, children  # coordinator, civil_affairs, tax, arbiter (and their helpers)

        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        with opener.open(url, timeout=30) as r:  # the one-time token -> session cookie -> home page
            assert r.status == 200
        base = url.split("/?", 1)[0]
        with opener.open(base + "/federation", timeout=30) as r:
            page = r.read().decode()
            assert r.status == 200 and r.headers["content-security-policy"].startswith("default-src 'self'")
        for node in ("civil_affairs", "tax", "arbiter"):
            assert f'data-node="{node}"' in page
        assert "data-dataset=\"tax.data\"" in page and re.search(r'data-purpose="[a-z-]+"', page)

        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=90) == 0, "\n".join(lines[-30:])
        time.sleep(0.5)
        assert any("console stopped" in line for line in lines) and any("demo exited" in line for line in lines)
        left = sorted(p for p in children if _alive(p))
        assert not left, f"still running after Ctrl-C: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for p in children:
            if _alive(p):
                os.kill(p, signal.SIGKILL)

"""Browser-test support for the web console (fedgov console): a federation, consoles, Chromium.

Used by tests/test_console_browser.py (and the ledger/points browser tests):

- :func:`console_federation` — a real loopback federation (coordinator and node
  processes, fedgov.runner.LocalFederation) of ``civil_affairs`` (guest: labels
  and features, a held-out set), ``tax`` (host; manual approval by two approvers,
  ``ann`` and ``bob``, dual control) and an ``arbiter``, on the breast data of
  examples/fate, plus :func:`vlr_manifest` for a short vertical-LR job on it;
- :class:`Console` / :func:`start_console` — ``python -m fedgov console`` as a
  real subprocess (random loopback port), its printed sign-in URL read from
  stdout; stopped (SIGTERM, then SIGKILL) on close;
- :func:`launch_chromium` — Playwright driving Debian's ``/usr/bin/chromium``
  (headless, never a browser download); ``apt-get install -y -q chromium
  fonts-noto-cjk`` first when it is missing and we are root;
- :func:`shot` — a full-page screenshot into the test's tmp dir and, when
  ``FEDGOV_CONSOLE_SCREENSHOTS=<dir>`` is set, there too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedgov.runner import LocalFederation
from fedgov.runspec import federation_for, load_spec

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
FATE = Path(__file__).resolve().parents[1] / "examples" / "fate" / "data"
PURPOSE = "social-assistance-eligibility"
TAX_APPROVERS = ["ann", "bob"]
URL_RE = re.compile(r"http://127\.0\.0\.1:\d+/\?token=[A-Za-z0-9_\-]+")


# --------------------------------------------------------------------------- federation


def console_federation(tmp: Path, *, approvers: list[str] | None = None) -> LocalFederation:
    """A (not yet started) federation: civil_affairs (guest), tax (host, two approvers), arbiter.

    ``tax`` approves manually with ``approvers_required = 2`` (ann and bob,
    kits under ``fed.kits``); civil affairs approves automatically. Use it as a
    context manager (it starts every process and stops them all on exit).
    """
    spec = tmp / "spec.toml"
    spec.write_text(
        f'[job]\nkind = "vertical-lr"\npurpose = "{PURPOSE}"\n'
        f'[[parties]]\nname = "civil_affairs"\nrole = "guest"\ndata = "{FATE}/breast_hetero_guest.csv"\n'
        f'eval_data = "{FATE}/breast_hetero_guest.csv"\nid = "id"\nlabel = "y"\n'
        f'[[parties]]\nname = "tax"\nrole = "host"\ndata = "{FATE}/breast_hetero_host.csv"\n'
        f'eval_data = "{FATE}/breast_hetero_host.csv"\nid = "id"\n'
    )
    fed = federation_for(load_spec(spec), tmp / "w")
    names = approvers if approvers is not None else TAX_APPROVERS
    tax = next(n for n in fed.nodes if n.name == "tax")
    policy = tax.policy.read_text().replace('approval = "auto"', 'approval = "manual"\napprovers_required = 2')
    tax.policy.write_text(policy)
    fed.approvers = {"tax": names}
    return fed


def vlr_manifest(*, epochs: int = 3, description: str = "Eligibility model (console test)") -> str:
    """A vertical-LR manifest for :func:`console_federation`: guest civil_affairs, host tax, arbiter."""
    guest = ["id", "y", *[f"x{i}" for i in range(10)]]
    host = ["id", *[f"x{i}" for i in range(20)]]
    return (
        f'[job]\nkind = "vertical-lr"\npurpose = "{PURPOSE}"\ndescription = "{description}"\n\n'
        f'[[participants]]\nnode = "civil_affairs"\nrole = "guest"\ndataset = "data"\neval_dataset = "eval"\n'
        f'id = "id"\nlabel = "y"\nfields = {guest!r}\n\n'.replace("'", '"')
        + f'[[participants]]\nnode = "tax"\nrole = "host"\ndataset = "data"\neval_dataset = "eval"\n'
        f'id = "id"\nfields = {host!r}\n\n'.replace("'", '"')
        + '[[participants]]\nnode = "arbiter"\nrole = "arbiter"\n\n'
        f"[parameters]\nepochs = {epochs}\nlearning_rate = 0.1\nseed = 3\nshapley = true\n"
    )


# --------------------------------------------------------------------------- consoles


class Console:
    """One ``fedgov console`` subprocess; ``url`` is the sign-in link it printed (usable once)."""

    def __init__(self, popen: subprocess.Popen[str], url: str, log: list[str]) -> None:
        self.popen = popen
        self.url = url
        self.base = url.split("/?", 1)[0]
        self.log = log

    def close(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_console(
    kit: Path, coordinator: str, *, node_config: Path | None = None, lang: str = "en", timeout: float = 30.0,
    extra_args: list[str] | None = None,
) -> Console:
    """``python -m fedgov console --kit KIT --coordinator ADDR`` on a random port; waits for its URL."""
    cmd = [sys.executable, "-m", "fedgov", "console", "--kit", str(kit), "--coordinator", coordinator,
           "--lang", lang, *(extra_args or [])]
    if node_config is not None:
        cmd += ["--node-config", str(node_config)]
    popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    log: list[str] = []
    found: list[str] = []

    def reader() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            log.append(line.rstrip("\n"))
            m = URL_RE.search(line)
            if m and not found:
                found.append(m.group(0))

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + timeout
    while not found:
        if popen.poll() is not None or time.monotonic() > deadline:
            console = Console(popen, "", log)
            console.close()
            raise RuntimeError("fedgov console did not print its URL:\n" + "\n".join(log[-20:]))
        time.sleep(0.05)
    return Console(popen, found[0], log)


# --------------------------------------------------------------------------- browser


def ensure_chromium() -> str:
    """Path of Debian's Chromium; installs ``chromium fonts-noto-cjk`` with apt-get when missing (root)."""
    if not Path(CHROMIUM).exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, stdin=subprocess.DEVNULL, check=False,
                       capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium", "fonts-noto-cjk"], env=env,
                       stdin=subprocess.DEVNULL, check=False, capture_output=True, timeout=1200)
    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y -q chromium fonts-noto-cjk")
    return CHROMIUM


@contextlib.contextmanager
def launch_chromium() -> Iterator[Any]:
    """A headless Playwright Chromium browser on /usr/bin/chromium (closed on exit)."""
    from playwright.sync_api import sync_playwright

    exe = ensure_chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def shot(page: Any, name: str, tmp: Path) -> Path:
    """Full-page PNG of ``page`` as ``<tmp>/screenshots/<name>.png`` (and in $FEDGOV_CONSOLE_SCREENSHOTS)."""
    out = tmp / "screenshots" / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True)
    extra = os.environ.get("FEDGOV_CONSOLE_SCREENSHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(extra) / out.name)
    return out


def sign_in(browser: Any, console: Console, *, lang: str | None = None) -> Any:
    """A new browser context (own cookies) signed in to ``console``; returns its page."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN" if lang == "zh" else "en-US")
    page = context.new_page()
    page.goto(console.url + (f"&lang={lang}" if lang else ""))
    return page

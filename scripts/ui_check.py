"""`make ui-check`: the Airflow UI on the local stack serves the catalog_reindex DAG, seen through a real login.

1. Installs Debian's chromium with apt-get if it is missing.
2. Starts scripts/airflow_local.sh (local stack + `airflow standalone`) in the background, in a scratch AIRFLOW_HOME
   and stack directory, on free ports, with the simple auth manager's user ``admin`` and a generated password.
3. Through the REST API, with a JWT from ``POST /auth/token``: a wrong password is refused, there are no DAG or plugin
   import errors, and ``catalog_reindex`` is loaded.
4. Signs in through the UI's login page with headless Chromium (driven over the DevTools protocol) and saves
   screenshots of the DAG list and of the catalog_reindex graph to docs/images/, checking that each page rendered.
5. Stops Airflow (SIGINT to its process group, as Ctrl-C would) and the local stack, and checks that none of their
   processes are left.

Every wait is bounded; any failure ends with one line saying what failed (exit 1) and the path of the logs.
Run with the project's venv: ``.venv/bin/python scripts/ui_check.py``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
DAG_ID = "catalog_reindex"
USER = "admin"
WINDOW = (1400, 900)
CHECK_BUDGET_S = 240  # from starting Airflow to the last screenshot (stopping it is bounded separately)
START_TIMEOUT_S = 180  # stack up, db migrate, connections, standalone until the API answers
DAG_TIMEOUT_S = 90  # until the DAG processor has stored the DAG
PAGE_TIMEOUT_S = 45  # each page of the UI until it has rendered
STOP_TIMEOUT_S = 60  # standalone shutting its components down after SIGINT

# No proxy for loopback requests, whatever the environment says.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class CheckFailed(Exception):
    """One line saying what went wrong."""


class OutOfTime(Exception):
    """Raised by SIGALRM when the check overruns its budget, wherever it is waiting."""


def log(message: str) -> None:
    print(f"ui-check: {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, *, token: str | None = None, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one request; connection errors raise OSError."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310 - loopback URL
    try:
        with _HTTP.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


# --------------------------------------------------------------------------------------------------------- chromium


def ensure_chromium() -> str:
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise CheckFailed("chromium is not installed; install Debian's package: sudo apt-get install -y chromium")
    log("chromium is missing; installing Debian's chromium with apt-get (a few minutes, once)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command, timeout in (
        (["apt-get", "update", "-qq"], 300),
        (["apt-get", "install", "-y", "-qq", "chromium"], 900),
    ):
        try:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise CheckFailed(f"`{' '.join(command)}` did not finish within {timeout}s") from exc
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise CheckFailed(f"`{' '.join(command)}` failed ({result.returncode}): {tail[0]}")
    found = shutil.which("chromium")
    if not found:
        raise CheckFailed("apt-get installed chromium, but there is no `chromium` on PATH")
    return found


class Browser:
    """Headless Chromium and one page of it, driven over the DevTools protocol (JSON over a websocket)."""

    def __init__(self, executable: str, workdir: Path) -> None:
        from websockets.sync.client import connect

        self.profile = workdir / "chromium-profile"
        self.profile.mkdir()
        self.log_path = workdir / "chromium.log"
        self.process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={self.profile}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.next_id = 0
        self.exits = contextlib.ExitStack()
        try:
            self._attach(connect)
        except BaseException:
            self.close()
            raise

    def _attach(self, connect: Any) -> None:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.process.poll() is not None:
                raise CheckFailed(f"chromium exited with code {self.process.returncode} while starting")
            if time.monotonic() > deadline:
                raise CheckFailed("chromium did not open its DevTools port within 30s")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        pages: list[dict] = []
        while not pages:
            try:
                _, targets = http("GET", f"http://127.0.0.1:{port}/json/list")
            except OSError:
                targets = []
            pages = [t for t in targets if t.get("type") == "page"] if isinstance(targets, list) else []
            if not pages and time.monotonic() > deadline:
                raise CheckFailed("chromium opened no page to drive")
            time.sleep(0.2)
        self.socket = self.exits.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=None, proxy=None, open_timeout=10)
        )
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=WINDOW[0],
            height=WINDOW[1],
            deviceScaleFactor=1,
            mobile=False,
        )

    def call(self, method: str, timeout: float = 30, **params: Any) -> dict:
        self.next_id += 1
        ident = self.next_id
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CheckFailed(f"chromium did not answer {method} within {timeout:.0f}s")
            try:
                message = json.loads(self.socket.recv(timeout=remaining))
            except TimeoutError:
                continue
            if message.get("id") == ident:
                if "error" in message:
                    raise CheckFailed(f"chromium refused {method}: {message['error'].get('message')}")
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            detail = result["exceptionDetails"]
            raise CheckFailed(f"script error in the page: {detail.get('exception', {}).get('description', detail)}")
        return result.get("result", {}).get("value")

    def navigate(self, url: str) -> None:
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise CheckFailed(f"chromium could not open {url}: {result['errorText']}")

    def wait_for(self, expression: str, what: str, timeout: float = PAGE_TIMEOUT_S) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except CheckFailed:  # the page is between documents
                value = None
            if value:
                return value
            time.sleep(0.25)
        where = self.evaluate("location.href + ' | ' + (document.body ? document.body.innerText : '').slice(0, 200)")
        raise CheckFailed(f"timed out after {timeout:.0f}s waiting for {what}; the page shows: {where!r}")

    def type_into(self, selector: str, text: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.call("Input.insertText", text=text)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        # It may already be gone; whatever is left of its process group is ended below.
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=5)
        with contextlib.suppress(Exception):
            self.exits.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        stop_group(self.process.pid, "chromium", first=signal.SIGTERM, grace=5)


def check_image(path: Path, what: str) -> None:
    """A rendered page, not a blank one: enough distinct shades."""
    from PIL import Image

    with Image.open(path) as image:
        if image.size != WINDOW:
            raise CheckFailed(f"the screenshot of {what} is {image.size}, not {WINDOW}")
        colours = image.convert("RGB").getcolors(maxcolors=WINDOW[0] * WINDOW[1]) or []
    if len(colours) < 32:
        raise CheckFailed(f"the screenshot of {what} looks blank ({len(colours)} colours): {path}")


# ---------------------------------------------------------------------------------------------------------- processes


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes whose environment has name=value (to find any that left the process group)."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
                if state != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def stop_group(pgid: int, name: str, *, first: signal.Signals, grace: float) -> bool:
    """Signal a process group, escalating to SIGTERM and SIGKILL; True if it ended on the first signal."""
    steps = [(first, grace)] + [
        (sig, wait) for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)) if sig != first
    ]
    for index, (sig, wait) in enumerate(steps):
        if not group_members(pgid):
            return index <= 1
        if index:
            log(f"{name} did not stop on {steps[index - 1][0].name}; sending {sig.name}")
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return index == 0
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and group_members(pgid):
            time.sleep(0.2)
    if group_members(pgid):
        raise CheckFailed(f"{name} left processes behind: {group_members(pgid)}")
    return False


def _default_interrupts() -> None:
    # A launcher that ignores SIGINT (e.g. a background job) must not make Airflow ignore it too.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class LocalAirflow:
    """scripts/airflow_local.sh in the background, in its own process group, on scratch directories."""

    def __init__(self, workdir: Path) -> None:
        self.home = workdir / "airflow"
        self.stack_dir = workdir / "stack"
        self.log_path = workdir / "airflow.log"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.password = secrets.token_urlsafe(18)
        self.stack_pids: list[int] = []
        self.home.mkdir()
        passwords = workdir / "passwords.json"
        passwords.write_text(json.dumps({USER: self.password}) + "\n")
        passwords.chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            {
                "LMINDEXER_AIRFLOW_HOME": str(self.home),
                "LMINDEXER_STACK_DIR": str(self.stack_dir),
                "AIRFLOW__API__PORT": str(self.port),
                # The log servers of the scheduler and triggerer default to fixed ports; keep clear of a running one.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
                "NO_COLOR": "1",
            }
        )
        self.process = subprocess.Popen(
            ["bash", str(ROOT / "scripts" / "airflow_local.sh")],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_interrupts,
        )

    def note_stack(self) -> None:
        """Remember the local stack's PIDs, to check at the end that they are gone."""
        if not self.stack_pids:
            with contextlib.suppress(OSError, ValueError, KeyError):
                state = json.loads((self.stack_dir / "stack.json").read_text())
                self.stack_pids = [int(state["s3_pid"]), int(state["search_pid"])]

    def live_stack_processes(self) -> list[int]:
        live = []
        for pid in self.stack_pids:
            with contextlib.suppress(OSError):
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
                if state != "Z" and str(self.stack_dir) in os.readlink(f"/proc/{pid}/fd/1"):
                    live.append(pid)
        return live

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.note_stack()
            if self.process.poll() is not None:
                raise CheckFailed(
                    f"scripts/airflow_local.sh exited with code {self.process.returncode} before the API answered"
                )
            try:
                status, _ = http("GET", f"{self.base}/api/v2/monitor/health", timeout=3)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise CheckFailed(f"the Airflow API did not answer on {self.base} within {timeout:.0f}s")

    def airflow_processes(self) -> list[int]:
        """Every live process of this Airflow (they all carry its AIRFLOW_HOME) and of the script's group."""
        return sorted(set(processes_with_env("AIRFLOW_HOME", str(self.home))) | set(group_members(self.process.pid)))

    def stop(self) -> None:
        """SIGINT to the script, as Ctrl-C would: it stops standalone, then the stack. Escalate if that hangs."""
        self.note_stack()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
            clean = True
        except subprocess.TimeoutExpired:
            clean = False
        for sig in (signal.SIGTERM, signal.SIGKILL):
            left = self.airflow_processes()
            if not left:
                break
            when = "after the script ended" if clean else f"{STOP_TIMEOUT_S}s after SIGINT"
            log(f"Airflow processes still running {when}: {left}; sending {sig.name}")
            clean = False
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.airflow_processes():
                time.sleep(0.2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        # The script's EXIT trap stops the stack; if the script was killed, stop it here.
        if (self.stack_dir / "stack.json").is_file():
            log("the local stack was still recorded as running; stopping it")
            subprocess.run(
                [str(ROOT / ".venv" / "bin" / "lmindexer"), "stack", "down", "--dir", str(self.stack_dir)],
                capture_output=True,
                timeout=60,
                check=False,
            )
        if left := self.airflow_processes():
            raise CheckFailed(f"Airflow processes survived SIGKILL: {left}")
        if left := self.live_stack_processes():
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise CheckFailed(f"the local stack's processes {left} were still running (killed)")
        if not clean:
            raise CheckFailed("airflow standalone did not shut down cleanly on SIGINT (stopped by force)")


# ------------------------------------------------------------------------------------------------------------ checks


def check_api(airflow: LocalAirflow) -> None:
    base = airflow.base
    status, _ = http("GET", f"{base}/api/v2/dags")
    if status != 401:
        raise CheckFailed(f"GET /api/v2/dags without a token answered {status}, not 401: authentication is off")
    status, _ = http("POST", f"{base}/auth/token", body={"username": USER, "password": "not-" + airflow.password})
    if status != 401:
        raise CheckFailed(f"POST /auth/token with a wrong password answered {status}, not 401")
    status, body = http("POST", f"{base}/auth/token", body={"username": USER, "password": airflow.password})
    if status not in (200, 201) or not isinstance(body, dict) or "access_token" not in body:
        raise CheckFailed(f"POST /auth/token for {USER} answered {status}: {str(body)[:200]}")
    token = body["access_token"]
    log(f"POST /auth/token: signed in as {USER} (a wrong password and no token are refused)")

    deadline = time.monotonic() + DAG_TIMEOUT_S
    while True:
        status, dag = http("GET", f"{base}/api/v2/dags/{DAG_ID}", token=token)
        if status == 200:
            break
        if status != 404:
            raise CheckFailed(f"GET /api/v2/dags/{DAG_ID} answered {status}: {str(dag)[:200]}")
        status, errors = http("GET", f"{base}/api/v2/importErrors", token=token)
        if status == 200 and errors.get("total_entries"):
            break  # reported below
        if time.monotonic() > deadline:
            raise CheckFailed(f"the DAG processor did not load {DAG_ID} within {DAG_TIMEOUT_S}s")
        time.sleep(2)

    status, errors = http("GET", f"{base}/api/v2/importErrors", token=token)
    if status != 200:
        raise CheckFailed(f"GET /api/v2/importErrors answered {status}")
    if errors["total_entries"]:
        first = errors["import_errors"][0]
        reason = (first.get("stack_trace") or "").strip().splitlines()[-1:] or ["?"]
        raise CheckFailed(f"{errors['total_entries']} DAG import error(s), e.g. {first.get('filename')}: {reason[0]}")
    status, plugin_errors = http("GET", f"{base}/api/v2/plugins/importErrors", token=token)
    if status != 200:
        raise CheckFailed(f"GET /api/v2/plugins/importErrors answered {status}")
    if plugin_errors["total_entries"]:
        first = plugin_errors["import_errors"][0]
        raise CheckFailed(f"plugin import error in {first.get('source')}: {first.get('error')}")
    status, dag = http("GET", f"{base}/api/v2/dags/{DAG_ID}", token=token)
    if status != 200:
        raise CheckFailed(f"GET /api/v2/dags/{DAG_ID} answered {status} after the import errors check")
    status, tasks = http("GET", f"{base}/api/v2/dags/{DAG_ID}/tasks", token=token)
    if status != 200 or not tasks.get("total_entries"):
        raise CheckFailed(f"GET /api/v2/dags/{DAG_ID}/tasks answered {status} with no tasks")
    log(
        f"REST API: 0 DAG import errors, 0 plugin import errors; {DAG_ID} loaded "
        f"({tasks['total_entries']} tasks, file {dag.get('fileloc', '?')})"
    )


def check_ui(airflow: LocalAirflow, browser: Browser, shots_dir: Path) -> list[Path]:
    base = airflow.base
    browser.navigate(f"{base}/")
    browser.wait_for(
        "location.pathname.startsWith('/auth/login') && !!document.querySelector('input[name=password]')",
        "the login page (the UI must ask for a login)",
    )
    browser.type_into("input[name=username]", USER)
    browser.type_into("input[name=password]", airflow.password)
    browser.evaluate("document.querySelector('button[type=submit]').click()")
    browser.wait_for(
        "!location.pathname.startsWith('/auth/') && document.cookie.includes('_token=')",
        "the login to complete",
    )
    log(f"UI: signed in as {USER} through the login page")

    shots = []
    browser.navigate(f"{base}/dags")
    browser.wait_for(
        f"document.body.innerText.includes({json.dumps(DAG_ID)}) && !document.querySelector('.chakra-spinner')",
        f"the DAG list to show {DAG_ID}",
    )
    time.sleep(2)  # let fonts and the layout settle
    shots.append(shots_dir / "airflow-dags.png")
    browser.screenshot(shots[-1])
    check_image(shots[-1], "the DAG list")

    # The DAG page opens the view last chosen in this browser; choose the graph.
    browser.evaluate("localStorage.setItem('default_dag_view', JSON.stringify('graph'))")
    browser.navigate(f"{base}/dags/{DAG_ID}")
    nodes = browser.wait_for(
        "document.querySelectorAll('.react-flow__node').length >= 3 "
        "&& document.body.innerText.includes('discover') "
        "&& document.querySelectorAll('.react-flow__node').length",
        f"the {DAG_ID} graph to render its tasks",
    )
    # Give the graph the whole width: collapse the details panel, then fit the graph to the view again.
    browser.evaluate("document.querySelector('button[aria-label=\"Collapse Details Panel\"]')?.click()")
    time.sleep(1)
    browser.evaluate("document.querySelector('button[aria-label=\"Fit View\"]')?.click()")
    time.sleep(3)  # the fit is animated
    shots.append(shots_dir / "airflow-catalog-reindex-graph.png")
    browser.screenshot(shots[-1])
    check_image(shots[-1], f"the {DAG_ID} graph")
    log(f"UI: DAG list and {DAG_ID} graph rendered ({nodes} graph nodes)")
    return shots


def main() -> int:
    started = time.monotonic()
    workdir: Path | None = None
    airflow: LocalAirflow | None = None
    browser: Browser | None = None
    failure: str | None = None

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    def on_alarm(_signum: int, _frame: Any) -> None:
        raise OutOfTime

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGALRM, on_alarm)
    try:
        if not (ROOT / ".venv" / "bin" / "airflow").is_file():
            raise CheckFailed("no .venv with Airflow; run `make venv` first")
        chromium = ensure_chromium()
        check_started = time.monotonic()
        signal.alarm(CHECK_BUDGET_S)
        workdir = Path(tempfile.mkdtemp(prefix="lmindexer-ui-check-"))
        airflow = LocalAirflow(workdir)
        log(f"starting the local stack and airflow standalone on {airflow.base} (log: {airflow.log_path})")
        airflow.wait_until_up(START_TIMEOUT_S)
        log(f"API server answered after {time.monotonic() - check_started:.0f}s")
        check_api(airflow)
        browser = Browser(chromium, workdir)
        shots = check_ui(airflow, browser, workdir)
        signal.alarm(0)
    except CheckFailed as exc:
        failure = str(exc)
    except OutOfTime:
        failure = f"the check ran past its {CHECK_BUDGET_S}s budget"
    except KeyboardInterrupt:
        failure = "interrupted"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
        if browser is not None:
            try:
                browser.close()
            except CheckFailed as exc:
                failure = failure or str(exc)
        if airflow is not None:
            log("stopping airflow standalone and the local stack")
            try:
                airflow.stop()
                log(f"stopped; no processes of this Airflow, its local stack {airflow.stack_pids} or chromium left")
            except CheckFailed as exc:
                failure = failure or str(exc)
    if failure:
        print(f"ui-check FAILED: {failure}", file=sys.stderr)
        if airflow is not None:
            print(f"--- last lines of {airflow.log_path}:\n{airflow.log_tail()}", file=sys.stderr)
        return 1
    # Only a passing check replaces the screenshots in the documentation.
    IMAGES.mkdir(parents=True, exist_ok=True)
    published = [Path(shutil.copyfile(shot, IMAGES / shot.name)) for shot in shots]
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
    names = ", ".join(str(path.relative_to(ROOT)) for path in published)
    log(f"passed in {time.monotonic() - started:.0f}s; screenshots: {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

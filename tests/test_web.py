"""`vp ui`: a real uvicorn server (`vp ui` as a subprocess) driven over HTTP and by a real
headless Chromium, against an sshd test host, the vast emulator and the local platform.

The API's auth rules (401, login, CSRF, rate limit, TLS-or-loopback) are checked over plain
HTTP; what a person does — log in, start and stop a host, start a run and watch its log, open
a host app with its WebSocket, leave the page open past the idle limit — in the browser.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import VpEnv
from tests.emulators.vast import vast_emulator  # noqa: F401
from tests.requires import require, require_module
from tests.test_run import _OwnHomeHost
from tests.waiting import wait_for

httpx = require_module("httpx", "vp ui tests need the ui extra (pip install -e '.[ui]')")
require_module("starlette", "vp ui tests need the ui extra (pip install -e '.[ui]')")

pytestmark = pytest.mark.timeout(240)

TOKEN = "test-token-0123456789abcdef"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, proc: subprocess.Popen, log: Path, apps_url: str):
        self.url, self.proc, self.log, self.apps_url = url, proc, log, apps_url

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kw)

    def api(self) -> httpx.Client:
        return self.client(headers={"Authorization": f"Bearer {TOKEN}"})


@contextmanager
def vp_ui(env: VpEnv, *args: str, token: str | None = TOKEN) -> Iterator[Server]:
    """`vp ui` on a free port until the block ends."""
    port, apps_port = _free_port(), _free_port()
    log = env.home / f"vp-ui-{port}.log"
    extra = {"VP_UI_TOKEN": token} if token else {}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vp", "ui", "--port", str(port)]
            + ["--apps-port", str(apps_port), *args],
            cwd=env.project,
            env={**env.env, **extra},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/login", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(
            up,
            60,
            "the server to answer",
            gave_up=lambda: None if proc.poll() is None else "vp ui exited",
            context=lambda: log.read_text(),
        )
        yield Server(url, proc, log, f"http://127.0.0.1:{apps_port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _login(client: httpx.Client) -> str:
    """Log in with the token; return the page's CSRF token."""
    r = client.post("/login", data={"token": TOKEN, "next": "/"})
    assert r.status_code == 303, r.text
    page = client.get("/")
    assert page.status_code == 200
    return re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)


def _local_project(env: VpEnv, extra: str = "") -> None:
    env.write_config(f'[project]\nname = "webdemo"\n[host]\nplatform = "local"\n{extra}')


# ---------------------------------------------------------------------------- no browser


def test_auth_rules(vp_env: VpEnv) -> None:
    _local_project(vp_env)
    with vp_ui(vp_env) as server:
        anon = server.client()
        # unauthenticated: the API says 401, pages send you to the login page
        for path in ("/api/hosts", "/api/spend", "/api/runs", "/api/runs/abc/log", "/api/apps"):
            assert anon.get(path).status_code == 401, path
        assert anon.post("/api/keepalive").status_code == 401
        assert anon.post("/api/runs", json={"command": "touch /tmp/x"}).status_code == 401
        r = anon.get("/")
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        assert anon.get("/apps/x/").status_code == 303
        assert anon.get("/static/app.js").status_code == 200  # static assets are open
        # a wrong token, or a forged cookie, opens nothing
        bad = server.client(headers={"Authorization": "Bearer nope"})
        assert bad.get("/api/hosts").status_code == 401
        forged = server.client(cookies={"vp_session": "eyJuIjoiYSIsImV4cCI6OTk5OTk5OTk5OX0.x"})
        assert forged.get("/api/hosts").status_code == 401

        # API clients: the bearer token, no CSRF token needed
        hosts = server.api().get("/api/hosts")
        assert hosts.status_code == 200, hosts.text
        assert json.loads(vp_env.run("-o", "json", "ls").stdout) == hosts.json()
        spent = server.api().get("/api/spend").json()  # the `vp spend` numbers
        spend_cli = json.loads(vp_env.run("-o", "json", "spend").stdout)
        assert spent == {k: spend_cli[k] for k in ("today", "month", "per_hour")}

        # a browser session: HttpOnly, SameSite=Strict, expiring cookie
        browser = server.client()
        r = browser.post("/login", data={"token": TOKEN, "next": "/"})
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=" in cookie
        csrf = _login(browser)
        assert browser.get("/api/hosts").status_code == 200
        # a state-changing request with the cookie but without the CSRF token is refused
        assert browser.post("/api/keepalive").status_code == 403
        r = browser.post("/api/runs", json={"command": "echo hi"})
        assert r.status_code == 403
        r = browser.post("/api/keepalive", headers={"X-CSRF-Token": "0" * 43})
        assert r.status_code == 403
        r = browser.post("/api/keepalive", headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        # and an app behind the proxy cannot be posted to from another site
        r = browser.post("/apps/none/x", headers={"Origin": "https://evil.example"})
        assert r.status_code == 403

        # login attempts are rate-limited
        guesser = server.client()
        codes = [guesser.post("/login", data={"token": f"guess{i}"}).status_code for i in range(8)]
        assert codes[0] == 403 and codes[-1] == 429, codes
        assert guesser.post("/login", data={"token": TOKEN}).status_code == 429


def test_token_file_bind_rules_and_lazy_import(vp_env: VpEnv) -> None:
    _local_project(vp_env)
    with vp_ui(vp_env, token=None) as server:
        path = vp_env.home / ".config" / "vp" / "ui-token"
        wait_for(lambda: "log in with the token" in server.log.read_text(), 10)
        token = path.read_text().strip()
        assert len(token) >= 32
        assert path.stat().st_mode & 0o777 == 0o600
        assert token in server.log.read_text()  # printed on start
        ok = server.client(headers={"Authorization": f"Bearer {token}"}).get("/api/hosts")
        assert ok.status_code == 200
    # a second start reuses it
    with vp_ui(vp_env, token=None):
        assert path.read_text().strip() == token

    r = vp_env.run("ui", "--bind", "0.0.0.0", "--port", str(_free_port()))
    assert r.returncode == 2, r.stderr
    assert "--cert" in r.stderr and "--insecure" in r.stderr and "Traceback" not in r.stderr
    r = vp_env.run("ui", "--bind", "0.0.0.0", "--cert", "/nonexistent", "--key", "/nonexistent")
    assert r.returncode == 2 and "no such file" in r.stderr

    # `vp --help` and a run never load the web stack
    probe = (
        "import sys\nfrom vp.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('LOADED' if {'starlette', 'uvicorn'} & set(sys.modules) else 'CLEAN', "
        "file=sys.stderr)\n"
    )
    for args in (["--help"], ["true"], ["ls"]):
        proc = subprocess.run(
            [sys.executable, "-c", probe, *args],
            cwd=vp_env.project,
            env=vp_env.env,
            capture_output=True,
            text=True,
        )
        assert proc.stderr.strip().endswith("CLEAN"), (args, proc.stderr)


def test_apps_config_is_validated(vp_env: VpEnv) -> None:
    _local_project(vp_env, "[ui]\napps = { jupyter = 88888 }\n")
    r = vp_env.run("ui")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "[ui] apps" in r.stderr and "not a port" in r.stderr
    _local_project(vp_env, '[ui]\napps = { "a b" = 8888 }\n')
    r = vp_env.run("config", "show")
    assert r.returncode != 0 and "app name" in r.stderr


# ---------------------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    webdriver = require_module("selenium.webdriver", "browser tests need selenium")
    require(os.path.exists(CHROMIUM), f"browser tests need {CHROMIUM} (apt install chromium)")
    require(
        os.path.exists(CHROMEDRIVER),
        f"browser tests need {CHROMEDRIVER} (apt install chromium-driver)",
    )
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1100,700",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver, css: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return driver.find_element("css selector", css).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _click(driver, css: str) -> None:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    def click() -> bool:
        try:
            driver.find_element("css selector", css).click()
            return True
        except (NoSuchElementException, StaleElementReferenceException):
            return False

    wait_for(click, 30, f"{css} to be clickable")


def _open_page(driver, server: Server) -> None:
    """Log in through the login page, as a person with the printed token does."""
    driver.delete_all_cookies()
    driver.get(server.url + "/")
    wait_for(lambda: driver.current_url.startswith(server.url + "/login"), 20, "the login page")
    driver.find_element("id", "token").send_keys(TOKEN)
    driver.find_element("id", "login-button").click()
    wait_for(lambda: driver.current_url == server.url + "/", 20, "the control page")
    wait_for(lambda: "loading" not in _text(driver, "#hosts tbody"), 60, "the host list")


def _screenshot(driver, name: str) -> None:
    """VP_SCREENSHOTS=DIR keeps the README's pictures up to date (docs/)."""
    folder = os.environ.get("VP_SCREENSHOTS")
    if folder:
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


@contextmanager
def _webapp(port: int, drop_port: int, log: Path) -> Iterator[None]:
    """The tiny HTTP + WebSocket app on the test host's loopback (tests/webapp_server.py), and
    on `drop_port` its server that drops a kept-alive connection at the next request."""
    with log.open("wb") as out:  # a file, not a pipe nobody reads: the app never blocks
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.webapp_server", str(port), str(drop_port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: b"ready" in log.read_bytes(),
            30,
            "the echo app",
            gave_up=lambda: None if proc.poll() is None else "the echo app exited",
            context=lambda: log.read_text(),
        )
        yield
    finally:
        proc.terminate()
        proc.wait()


def test_page_runs_a_command_and_proxies_an_app(ssh_project: VpEnv, browser) -> None:
    app_port, drop_port = _free_port(), _free_port()
    cfg = ssh_project.project / "vp.toml"
    cfg.write_text(
        cfg.read_text() + f"\n[ui]\napps = {{ echo = {app_port}, dropping = {drop_port} }}\n"
    )
    # A proxy in the environment (a company network's) must not carry the app proxy's own
    # loopback connections: one that answers nothing would break every app.
    dead = f"http://127.0.0.1:{_free_port()}"
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        ssh_project.env[var] = dead
    webapp_log = ssh_project.home / "webapp.log"
    with _webapp(app_port, drop_port, webapp_log), vp_ui(ssh_project) as server:
        _open_page(browser, server)
        wait_for(lambda: "running" in _text(browser, "#hosts tbody"), 30, "the ssh host row")
        assert "ssh" in _text(browser, "#hosts tbody")

        # a run started from the page streams its log into the page
        marker = ssh_project.project / "go"
        browser.find_element("id", "command").send_keys(
            f"echo first-line; while [ ! -e {marker} ]; do sleep 0.1; done; echo second-line"
        )
        _click(browser, "#run-button")
        wait_for(lambda: "first-line" in _text(browser, "#log"), 60, "the first line live")
        assert "second-line" not in _text(browser, "#log")
        assert browser.find_element("id", "log").get_attribute("data-state") == "following"
        marker.touch()
        wait_for(lambda: "second-line" in _text(browser, "#log"), 60, "the rest of the log")
        wait_for(
            lambda: browser.find_element("id", "log").get_attribute("data-state") == "ended", 30
        )
        runs = server.api().get("/api/runs").json()
        assert runs == json.loads(ssh_project.run("-o", "json", "runs", "-n", "50").stdout)
        assert runs[0]["status"] == "detached" and "first-line" in runs[0]["command"]
        wait_for(lambda: "first-line" in _text(browser, "#runs tbody"), 30, "the run listed")
        _screenshot(browser, "ui-runs")

        # the app proxy: its page (root-relative links fixed) and its WebSocket echo
        link = browser.find_element("css selector", "#hosts a.app")
        assert link.get_attribute("href") == server.url + "/apps/echo/"
        browser.get(server.url + "/apps/echo/")
        wait_for(lambda: _text(browser, "#app-title") == "echo app", 30, "the app's page")
        # the host's app runs on its own origin, never on the control page's
        assert browser.current_url == server.apps_url + "/apps/echo/"
        wait_for(
            lambda: _text(browser, "#ws-result") == "echo: ping from the page",
            90,
            "the WebSocket echo through the proxy",
            context=lambda: webapp_log.read_text() + server.log.read_text(),
        )
        assert browser.find_element("id", "next").get_attribute("href").endswith("/apps/echo/next")
        # redirects stay under the prefix; vp's credentials never reach the host's app
        api = server.api()
        r = api.get("/apps/echo/go-home", follow_redirects=False)
        assert r.status_code == 302 and r.headers["location"] == "/apps/echo/"
        with server.client(
            headers={"Authorization": f"Bearer {TOKEN}"}, cookies={"vp_session": "x", "other": "1"}
        ) as with_cookies:
            seen = with_cookies.get("/apps/echo/headers").text
        assert "authorization" not in seen.lower() and "vp_session" not in seen
        assert "other=1" in seen and "X-Forwarded-Prefix: /apps/echo" in seen

        # a hostile app's script cannot reach the page or the API with the user's session
        stolen = browser.execute_async_script(
            """
            const done = arguments[arguments.length - 1];
            const page = arguments[0];
            const out = {};
            Promise.all([
              fetch(page + "/", {credentials: "include"}).then(r => r.text())
                .then(t => { out.page = t.includes("csrf-token") ? "READ" : "no"; },
                      () => { out.page = "blocked"; }),
              fetch(page + "/api/hosts", {credentials: "include"}).then(r => r.text())
                .then(t => { out.api = "READ " + t.slice(0, 40); }, () => { out.api = "blocked"; }),
              fetch("/", {credentials: "include"}).then(r => r.text())
                .then(t => { out.own = t.includes("csrf-token") ? "READ" : "no"; },
                      () => { out.own = "blocked"; }),
            ]).then(() => done(out));
            """,
            server.url,
        )
        assert stolen["page"] == "blocked" and stolen["api"] == "blocked", stolen
        assert stolen["own"] == "no", stolen  # the apps origin serves no control page

        # An app may close a kept-alive connection just as the proxy sends the next request
        # on it (the echo app closes after every answer; under load its close reaches vp ui
        # late, and the page's script then came back 502, so no WebSocket opened). The
        # proxy asks again on a new connection; this app drops every second request.
        for path in ("a", "b", "c"):
            r = api.get(f"/apps/dropping/{path}")
            assert r.status_code == 200 and r.text == f"answered /{path}", r.text


def test_page_stops_and_starts_a_cloud_host(
    vast_emulator,  # noqa: F811
    vp_env: VpEnv,
    remote_workdir: Path,
    browser,
) -> None:
    vp_env.env["VAST_URL"] = vast_emulator.url
    vp_env.env["VAST_API_KEY"] = vast_emulator.api_key
    user_cfg = vp_env.home / ".config" / "vp" / "config.toml"
    user_cfg.parent.mkdir(parents=True, exist_ok=True)
    user_cfg.write_text("[vast]\npoll_interval = 0.1\n")
    vp_env.write_config(
        f"""
        [project]
        name = "webcloud"

        [host]
        platform = "vast"
        gpu = "4090"
        max_price = 5.0
        ready_timeout = 60

        [sync]
        workdir = "{remote_workdir}"
        """
    )
    r = vp_env.run("up")
    assert r.returncode == 0, r.stderr
    [iid] = vast_emulator.instances
    with vp_ui(vp_env) as server:
        _open_page(browser, server)
        row = "#hosts tbody tr[data-platform=vast]"
        wait_for(lambda: "running" in _text(browser, f"{row} .status"), 30, "the running host")
        _screenshot(browser, "ui-hosts")
        _click(browser, f"{row} button.stop")
        wait_for(lambda: _text(browser, f"{row} .status") == "stopped", 90, "the host stopped")
        assert vast_emulator.instances[iid]["actual_status"] in ("stopped", "exited")
        _click(browser, f"{row} button.start")
        wait_for(lambda: _text(browser, f"{row} .status") == "running", 90, "the host running")
        assert vast_emulator.instances[iid]["actual_status"] == "running"
        # destroy asks first; dismissing it destroys nothing
        _click(browser, f"{row} button.destroy")
        alert = wait_for(lambda: _alert(browser), 10, "the confirmation")
        assert "Destroy" in alert.text
        alert.dismiss()
        assert iid in vast_emulator.instances
        # the API's destroy is `vp down --yes`: the instance and vp's record of it are gone
        [row] = server.api().get("/api/hosts").json()
        r = server.api().post(f"/api/hosts/{row['name']}/down?platform=vast")
        assert r.status_code == 200 and r.json()["ok"], r.text
        assert iid not in vast_emulator.instances
        assert server.api().get("/api/hosts").json() == []
    assert json.loads(vp_env.run("-o", "json", "ls").stdout) == []


def _alert(driver):
    from selenium.common.exceptions import NoAlertPresentException

    try:
        return driver.switch_to.alert
    except NoAlertPresentException:
        return None


def test_idle_stop_waits_for_the_page_to_close(vp_env: VpEnv, tmp_path: Path, browser) -> None:
    host = _OwnHomeHost(tmp_path / "idle-host")
    host.start()
    try:
        vp_env.use_ssh_host(host, tmp_path / "remote")
        marker = tmp_path / "stopped"
        limit_s = 15.0  # room for a keep-alive's ssh round trip on a loaded 2-core machine
        cfg = vp_env.project / "vp.toml"
        cfg.write_text(
            cfg.read_text().replace(
                "[ssh]\n",
                f'idle_stop_minutes = {limit_s / 60}\nidle_stop_command = "date > {marker}"\n\n'
                "[ssh]\n",
            )
        )
        watchdog = host.root / "home" / ".vp" / "watchdog"
        with vp_ui(vp_env) as server:
            _open_page(browser, server)
            # the page's keep-alive arms the host's watchdog and shows the countdown
            pid_file = Path(f"{watchdog}.pid")
            wait_for(pid_file.exists, 30, "the page to arm the idle watchdog")
            armed = pid_file.stat().st_mtime
            wait_for(lambda: "stops when idle in" in _text(browser, "#idle"), 30)
            # several idle limits pass on the host's own clock while the page is open
            activity = Path(f"{watchdog}.activity")
            wait_for(
                lambda: activity.stat().st_mtime - armed > 3 * limit_s,
                150,
                "the host to stay up through three idle limits",
                gave_up=lambda: "stopped while the page was open" if marker.exists() else None,
            )
            assert not marker.exists()
            _click(browser, "#keep")  # the button works too
            browser.get("about:blank")  # the page closes
            closed = time.time()
            wait_for(marker.exists, 120, "the idle stop after the page closed")
        assert marker.stat().st_mtime >= closed - 1
        assert "stopping" in Path(f"{watchdog}.log").read_text()
    finally:
        host.close()

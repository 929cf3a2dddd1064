"""Fixtures for the dashboard's browser tests: the real API app (uvicorn on a loopback
port, real Redis, jobs launched as local subprocesses on the session Ray cluster) and
Debian's chromium driven by Playwright.

Screenshots of every page go to ``artifacts/screenshots/`` (see the README).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from services.launch_env import pythonpath_with
from services.serve import api_command
from tests.servers import SubprocessServer

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"
CHROMIUM = os.environ.get("RECTRAIN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
TOKEN = "dashboard-test-token"
OWNER = "alice"
TERMINAL = {"succeeded", "failed", "cancelled"}


class ApiServer(SubprocessServer):
    """``uvicorn api.main:create_app --factory`` in a subprocess; restartable on its port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        super().__init__(env)
        self.base_url = self.url
        self.api_log = log_path
        self.http = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        )

    def command(self) -> list[str]:
        return api_command(self.port, "--log-level", "warning", "--timeout-graceful-shutdown", "2")

    def wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the API exited ({self.proc.returncode}); see {self.api_log}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the API did not get ready in {timeout_s}s; see {self.api_log}")

    def start(self, log: Path | None = None, timeout_s: float = 90) -> "ApiServer":
        super().start(log or self.api_log, timeout_s)
        return self

    def restart(self) -> None:
        """Stop and start the API on the same port (jobs keep running: runners are detached)."""
        self.stop()
        self.start()

    # -- REST helpers for the tests (the browser is what is under test) ------------------
    def submit(self, spec: dict, name: str | None = None, labels: dict | None = None) -> dict:
        r = self.http.post("/v1/jobs", json={"spec": spec, "name": name, "labels": labels or {}})
        assert r.status_code == 201, r.text
        return r.json()

    def job(self, job_id: str) -> dict:
        r = self.http.get(f"/v1/jobs/{job_id}")
        r.raise_for_status()
        return r.json()

    def wait_terminal(self, job_id: str, timeout_s: float) -> dict:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            j = self.job(job_id)
            if j["status"] in TERMINAL:
                return j
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {j['status']} after {timeout_s}s")


@pytest.fixture(scope="module")
def dashboard_api(redis_url, ray_address):
    # module scope: a live API runs a reaper over the shared session Redis, which must
    # not outlive these tests and adopt or relaunch the jobs of the suites after them
    # Run directories, runner logs and the API's log stay under artifacts/ (gitignored)
    # so that a failed CI run can be read afterwards.
    data_dir = ARTIFACTS / "dashboard-run"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": redis_url,
            "RECTRAIN_API_TOKENS": f"{TOKEN}:{OWNER}",
            "RECTRAIN_ENV": "development",
            "RECTRAIN_LAUNCHER": "local",  # `rectrain run` subprocesses ...
            "RAY_ADDRESS": ray_address,  # ... that join the session's Ray cluster
            "RECTRAIN_DATA_DIR": str(data_dir),
            "PYTHONPATH": pythonpath_with(REPO, env=env),
        }
    )
    server = ApiServer(env, data_dir / "api.log")
    server.start()
    try:
        yield server
    finally:
        try:  # leave no trainer running behind the session
            if server.proc is None:
                server.start()
            for j in server.http.get("/v1/jobs", params={"limit": 200}).json()["data"]:
                if j["status"] not in TERMINAL:
                    server.http.post(f"/v1/jobs/{j['id']}/cancel")
        except Exception:
            pass
        server.stop()
        server.http.close()


@pytest.fixture(scope="module")
def browser():
    # module scope: Playwright's sync API keeps an event loop running on this thread
    # while it is open, which breaks asyncio.run() in the tests that follow
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: run scripts/setup-test-tools.sh (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def new_page(browser, dashboard_api):
    """new_page(token=True, color_scheme="light") -> a Page in a fresh browser context.

    With ``token`` the API token is already in sessionStorage (as after the prompt);
    page errors and console errors are collected on ``page.errors``.
    """
    contexts = []

    def make(token: bool = True, color_scheme: str = "light", width: int = 1400, height: int = 1000):
        ctx = browser.new_context(
            viewport={"width": width, "height": height},
            color_scheme=color_scheme,
            base_url=dashboard_api.base_url,
        )
        ctx.set_default_timeout(30_000)
        if token:
            ctx.add_init_script(f"sessionStorage.setItem('rectrain.token', {TOKEN!r})")
        contexts.append(ctx)
        page = ctx.new_page()
        page.errors = []
        page.on("pageerror", lambda e: page.errors.append(f"pageerror: {e}"))
        return page

    yield make
    for ctx in contexts:
        ctx.close()


@pytest.fixture
def shot():
    """shot(page, name): a full-page screenshot at artifacts/screenshots/<name>.png."""

    def take(page, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take

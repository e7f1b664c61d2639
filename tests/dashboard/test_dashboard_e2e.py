"""The dashboard against a real job: a real Mosquitto that wants passwords, an aggregator and three
silo processes, the dashboard as a process, and a headless Chromium driven by Selenium looking at it.

The browser is Debian's (apt-get install chromium chromium-driver), found at fixed paths: nothing is
downloaded at run time (Selenium Manager is told to stay offline and is never needed). The tests run
in order on one job (module-scoped fixtures): first while it trains, then once it is over.
Set $DASHBOARD_SCREENSHOTS to a folder to keep the screenshots.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fedmq.broker.auth import AGGREGATOR, AuthDir
from fedmq.broker.server import free_port, mosquitto_binary, start_mosquitto, wait_for_port
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

HOST = "127.0.0.1"
CHROMIUM = Path(os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver"))
SILOS = ["silo-a", "silo-b", "silo-c"]
ROUNDS = 10  # with 200 images a silo and 2 epochs, a round takes seconds: time to watch it


def wait_until(condition: Callable[[], object], timeout: float, what: str, every: float = 0.25) -> object:
    """Poll ``condition`` until it returns something true; fail saying ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def start_dashboard(fedmq, db: str, log: Path, *args: str, env: dict[str, str] | None = None,
                    host: str = HOST) -> tuple[subprocess.Popen, str]:
    port = free_port(host)
    proc = fedmq.start("dashboard", "--db", db, "--host", host, "--port", str(port), *args, log=log, env=env)
    try:
        wait_for_port(host, port, timeout=60, process=proc)
    except Exception:
        proc.kill()
        pytest.fail(f"the dashboard did not start:\n{log.read_text()[-3000:]}")
    return proc, f"http://{host}:{port}"


def get(url: str, token: str | None = None, timeout: float = 10) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(url: str) -> dict:
    status, body = get(url)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


@dataclass
class Federation:
    """A running job and the dashboard watching it."""

    job: str
    db: str
    workdir: Path
    auth: AuthDir
    dashboard_url: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    broker_port: int = 0

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def passwords(self) -> list[str]:
        return [c.password for c in self.auth.credentials().values()]

    def stop_silo(self, name: str) -> None:
        """SIGTERM, as a service manager stops it: the silo says it goes offline, then exits."""
        self.procs[name].send_signal(signal.SIGTERM)

    def wait_finished(self, timeout: float) -> None:
        for name in ["aggregator", *(s for s in SILOS if s in self.procs)]:
            proc = self.procs[name]
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} did not finish in time:\n{self.log(name)[-3000:]}")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, fedmq) -> Iterator[Federation]:
    """A 10-round job of three silos on a Mosquitto that wants passwords, and its dashboard."""
    if mosquitto_binary() is None:
        pytest.fail("the mosquitto binary is required: apt-get install mosquitto")
    workdir = tmp_path_factory.mktemp("dashboard-job")
    data = workdir / "data"
    made = fedmq.run("data", "synth", "--silos", str(len(SILOS)), "--out", str(data), "--images-per-silo", "200")
    assert made.returncode == 0, made.stderr
    auth = AuthDir(workdir / "auth")
    auth.ensure(SILOS)
    port = free_port(HOST)
    broker = start_mosquitto(HOST, port, workdir / "mosquitto", log_file=workdir / "mosquitto.log", auth=auth.files)
    job = f"dash-{uuid.uuid4().hex[:8]}"
    db = f"sqlite:///{workdir / 'fedmq.db'}"

    def login(name: str) -> dict[str, str]:  # passwords go in the environment, never in arguments
        return {"FEDMQ_BROKER": auth.broker_url(name, HOST, port)}

    procs: dict[str, subprocess.Popen] = {}
    try:
        procs["aggregator"] = fedmq.start(
            "aggregator", "--job", job, "--db", db, "--rounds", str(ROUNDS), "--min-clients", "2",
            "--local-epochs", "2", "--lr", "0.05", "--round-timeout", "60", "--out", str(workdir / "out"),
            log=workdir / "aggregator.log", env=login(AGGREGATOR))
        for i, silo in enumerate(SILOS):
            procs[silo] = fedmq.start("client", "--job", job, "--silo", silo, "--data", str(data / str(i)),
                                      "--work-dir", str(workdir / silo), "--device", "cpu",
                                      log=workdir / f"{silo}.log", env=login(silo))
        store_file = workdir / "fedmq.db"
        wait_until(store_file.exists, 120, "the aggregator to create its store")
        dashboard, url = start_dashboard(fedmq, db, workdir / "dashboard.log", env=login(AGGREGATOR))
        procs["dashboard"] = dashboard
        yield Federation(job, db, workdir, auth, url, procs, port)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.kill()
        broker.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium through its own chromedriver, both from Debian's packages."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: apt-get install chromium chromium-driver", pytrace=False)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a browser or a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1900",
                "--no-first-run", "--disable-extensions", "--disable-background-networking"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
SCREENSHOTS = Path(os.environ.get("DASHBOARD_SCREENSHOTS", "")) if os.environ.get("DASHBOARD_SCREENSHOTS") else None


def job_api(f: Federation) -> dict:
    return get_json(f"{f.dashboard_url}/api/jobs/{f.job}")


def texts(driver, css: str) -> list[str]:
    """The text of every element matching ``css``, read in one go in the page: the pages rebuild their
    tables on each change, so element handles held across calls would go stale."""
    return driver.execute_script("return [...document.querySelectorAll(arguments[0])].map((e) => e.textContent)", css)


def attribute(driver, css: str, name: str) -> list[str | None]:
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => e.getAttribute(arguments[1]))", css, name)


def points(driver, metric: str) -> int:
    found = attribute(driver, f'.chart[data-metric="{metric}"]', "data-points")
    return int(found[0] or 0) if found else 0


def drawn_pixels(driver, metric: str) -> int:
    """Non-transparent pixels in the metric's chart canvas: the chart is drawn, not an empty box."""
    return driver.execute_script("""
        const canvas = document.querySelector(`.chart[data-metric="${arguments[0]}"] canvas`);
        if (!canvas) return 0;
        const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        let n = 0;
        for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) n++;
        return n;""", metric)


def screenshot(driver, path: Path) -> Path:
    """Save the page as PNG and check that it shows something: many colours, not one flat fill."""
    assert driver.save_screenshot(str(path)), "the browser saved no screenshot"
    image = Image.open(path).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    commonest = max(count for count, _ in colours)
    assert len(colours) > 50, f"{path.name} has only {len(colours)} colours: a blank page?"
    assert commonest < 0.95 * image.width * image.height, f"{path.name} is one flat colour"
    if SCREENSHOTS is not None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        (SCREENSHOTS / path.name).write_bytes(path.read_bytes())
    return path


def store_counts(db: str, job: str) -> dict[str, object]:
    """What the store holds, read with plain SQL (not through fedmq's code) to check /metrics against."""
    with sqlite3.connect(f"file:{db.removeprefix('sqlite:///')}?mode=ro", uri=True) as conn:
        (job_id,) = conn.execute("select id from jobs where name = ?", (job,)).fetchone()
        one = lambda sql: conn.execute(sql, (job_id,)).fetchone()[0]  # noqa: E731
        return {
            "rounds": one("select count(*) from rounds where job_id = ? and status = 'completed'"),
            "accepted": one("select count(*) from updates where job_id = ? and accepted"),
            "rejected": one("select count(*) from updates where job_id = ? and not accepted"),
            "bytes": one("select coalesce(sum(bytes), 0) from updates where job_id = ?"),
        }


def scrape(f: Federation) -> dict[str, float]:
    status, body = get(f"{f.dashboard_url}/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.labels.get("fedmq_job") != f.job:
                continue
            key = {"fedmq_rounds_completed_total": "rounds", "fedmq_updates_accepted_total": "accepted",
                   "fedmq_received_bytes_total": "bytes", "fedmq_silos_online": "online",
                   "fedmq_round_duration_seconds_count": "durations",
                   "fedmq_aggregator_peak_memory_bytes": "memory"}.get(sample.name)
            if key:
                out[key] = sample.value
            if sample.name == "fedmq_updates_rejected_total":
                out["rejected"] = out.get("rejected", 0) + sample.value
    out.setdefault("rejected", 0)
    return out


def inject_garbage(f: Federation, silo: str) -> None:
    """Bytes that are no fedmq message, on a silo's update topic with its own login: a rejected update."""
    cred = f.auth.credential(silo)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-garbage-{silo}", protocol=mqtt.MQTTv311)
    client.username_pw_set(cred.username, cred.password)
    client.connect(HOST, f.broker_port)
    client.loop_start()
    try:
        client.publish(f"fedmq/{f.job}/update/{silo}", b"\x00not a fedmq message" * 10, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def check_jobs_page(federation: Federation, browser) -> None:
    wait_until(lambda: any(j["job"] == federation.job for j in get_json(f"{federation.dashboard_url}/api/jobs")["jobs"]),
               120, "the job in the store")
    browser.get(federation.dashboard_url + "/")
    row = wait_until(lambda: texts(browser, f'#jobs tr[data-job="{federation.job}"]'), 10,
                     "the job's row on the jobs page")[0]
    assert federation.job in row and "classification" in row
    browser.execute_script("document.querySelector(arguments[0]).click()", f'#jobs tr[data-job="{federation.job}"] a')
    wait_until(lambda: urllib.parse.urlparse(browser.current_url).path == f"/jobs/{federation.job}", 10,
               "the job page to open from its link")


def check_live_job_page(federation: Federation, browser, tmp_path: Path) -> None:
    f = federation
    browser.get(f"{f.dashboard_url}/jobs/{f.job}")
    wait_until(lambda: points(browser, "accuracy") >= 1, 300, "a first point on the accuracy chart")
    browser.execute_script("window.__notReloaded = true")
    first = points(browser, "accuracy")
    assert texts(browser, "#rounds tbody tr"), "no rounds table"

    # A rejected update, while a round is open, shows up with its reason.
    wait_until(lambda: (job_api(f)["live"] or {}).get("round", {}).get("phase") == "training", 120, "an open round")
    deadline_text = wait_until(lambda: next((t for t in texts(browser, "#deadline") if t.endswith(" s")), None), 5,
                               "the round's deadline on the page")
    assert deadline_text.endswith(" s"), f"no deadline counting down: {deadline_text!r}"
    inject_garbage(f, "silo-a")
    reason = wait_until(lambda: next((r["reason"] for r in job_api(f)["rejections"] if r["silo"] == "silo-a"), None),
                        60, "the aggregator to record the rejection")
    row = wait_until(lambda: [r for r in texts(browser, '#rejections tr[data-silo="silo-a"]') if reason in r], 5,
                     "the rejection and its reason on the page")
    assert reason and "silo-a" in row[0]
    screenshot(browser, tmp_path / "job-page-running.png")  # mid-job: silos online, a round open

    # /metrics during the job agrees with the store (read before and after the scrape).
    before = store_counts(f.db, f.job)
    scraped = scrape(f)
    after = store_counts(f.db, f.job)
    for key in ("rounds", "accepted", "rejected", "bytes"):
        assert before[key] <= scraped[key] <= after[key], (key, before, scraped, after)
    assert scraped["online"] == len(SILOS) and scraped["memory"] > 10e6

    # A silo stopped: offline on the page within seconds; the job goes on with the other two.
    done = len([r for r in job_api(f)["rounds"] if r["status"] == "completed"])
    assert f.procs["aggregator"].poll() is None and done < ROUNDS - 1, f"the job ran ahead of the test ({done} rounds)"
    f.stop_silo("silo-c")
    stopped = time.monotonic()
    wait_until(lambda: texts(browser, '#silos li[data-silo="silo-c"][data-online="false"]'), 5, "silo-c shown offline")
    offline_after = time.monotonic() - stopped
    assert f.procs["silo-c"].wait(timeout=60) in (0, 130), f.log("silo-c")[-3000:]  # 130: stopped by a signal

    # More rounds complete; the chart grows without a reload.
    wait_until(lambda: points(browser, "accuracy") > first, 300, "the accuracy chart to grow")
    assert browser.execute_script("return window.__notReloaded") is True, "the page was reloaded"
    assert drawn_pixels(browser, "accuracy") > 200, "the accuracy chart is not drawn"
    assert attribute(browser, ".chart", "data-metric")[0] == "accuracy", "the primary metric is not first"
    print(f"silo-c shown offline {offline_after:.1f} s after it stopped")


def check_finished_job(federation: Federation, browser, fedmq, tmp_path: Path) -> None:
    f = federation
    f.wait_finished(timeout=600)
    browser.get(f"{f.dashboard_url}/jobs/{f.job}")
    wait_until(lambda: points(browser, "accuracy") == ROUNDS, 30, f"{ROUNDS} points on the accuracy chart")
    wait_until(lambda: texts(browser, "#job-status") == ["finished"], 10, "the job shown finished")
    rows = texts(browser, "#rounds tbody tr")
    assert len(rows) == ROUNDS and all("completed" in r for r in rows)
    assert points(browser, "train_loss") == ROUNDS and drawn_pixels(browser, "train_loss") > 200
    # The participation grid shows who was counted in each round, as `fedmq history` says.
    history = json.loads(fedmq.run("history", "--db", f.db, "--job", f.job, "--json").stdout)
    for r in history:
        shown = attribute(browser, f'#participation tr[data-round="{r["round"]}"] td:has(.cell.counted)', "data-silo")
        assert sorted(shown) == r["clients"], (r["round"], shown, r["clients"])
    assert "silo-c" not in history[-1]["clients"], "silo-c was stopped before the last round"
    accuracy = [r["metrics"]["accuracy"] for r in history]
    assert accuracy[-1] > 0.5 and accuracy[-1] > accuracy[0], f"the model did not learn: {accuracy}"
    screenshot(browser, tmp_path / "job-page.png")

    counts, scraped = store_counts(f.db, f.job), scrape(f)
    assert {k: scraped[k] for k in counts} == {k: float(v) for k, v in counts.items()}
    assert counts["rejected"] >= 1 and scraped["durations"] == ROUNDS


def check_no_credentials(federation: Federation, browser) -> None:
    f = federation
    secrets = f.passwords()
    assert len(secrets) == len(SILOS) + 1
    bodies: dict[str, str] = {}
    for path in ("/", f"/jobs/{f.job}", "/api/jobs", f"/api/jobs/{f.job}", "/metrics", "/static/dashboard.js",
                 "/static/index.html", "/static/job.html", "/static/dashboard.css", "/api/jobs/no-such-job"):
        _, body = get(f.dashboard_url + path)
        bodies[path] = body.decode(errors="replace")
    bodies["/api/events"] = first_event(f.dashboard_url)
    for path in ("/", f"/jobs/{f.job}"):
        browser.get(f.dashboard_url + path)
        wait_until(lambda: browser.execute_script("return document.body.dataset.refreshed"), 10, "the page's data")
        bodies[f"rendered {path}"] = browser.page_source
    bodies["dashboard log"] = f.log("dashboard")
    for where, text in bodies.items():
        for secret in secrets:
            assert secret not in text, f"a broker password is in {where}"
        assert "password" not in text.lower(), f"'password' in {where}"
    assert f"127.0.0.1:{f.broker_port}" in bodies[f"/api/jobs/{f.job}"], "the broker's address is shown"


def first_event(base: str) -> str:
    import urllib.request

    with urllib.request.urlopen(base + "/api/events", timeout=10) as stream:
        return stream.readline().decode() + stream.readline().decode()


def check_store_alone(federation: Federation, browser, fedmq, tmp_path: Path) -> None:
    f = federation
    proc, url = start_dashboard(fedmq, f.db, tmp_path / "store-only.log", env={"FEDMQ_BROKER": ""})
    try:
        browser.get(f"{url}/jobs/{f.job}")
        wait_until(lambda: points(browser, "accuracy") == ROUNDS, 30, "the curves from the store alone")
        assert "store only" in texts(browser, "#connection")[0]
        assert len(texts(browser, "#rounds tbody tr")) == ROUNDS
        assert texts(browser, '#rejections tr[data-silo="silo-a"]')
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_a_live_job_in_the_browser(federation: Federation, browser, fedmq, tmp_path: Path) -> None:
    """One test in phases, on one job (so that xdist cannot split the phases across workers)."""
    check_jobs_page(federation, browser)
    check_live_job_page(federation, browser, tmp_path)
    check_finished_job(federation, browser, fedmq, tmp_path)
    check_no_credentials(federation, browser)
    check_store_alone(federation, browser, fedmq, tmp_path)


def finished_store(tmp_path: Path) -> tuple[str, str]:
    """A store holding one job with one completed round, made through the store's own API."""
    from fedmq.store import Store

    db, job = f"sqlite:///{tmp_path / 'small.db'}", f"small-{uuid.uuid4().hex[:6]}"
    store = Store(db)
    job_id = store.create_job(job, "run", {"status": "finished", "task": "classification", "model": "cnn", "rounds": 1}).id
    round_id = store.open_round(job_id, 1)
    store.record_update(job_id, round_id, "s", accepted=True, claimed_round=1, num_samples=4, size=100)
    store.mark_aggregated(round_id, 4, "0" * 64, "ckpt")
    store.complete_round(round_id, {"accuracy": 0.5, "loss": 1.0})
    store.close()
    return db, job


def test_off_loopback_every_request_needs_the_token(browser, fedmq, tmp_path: Path) -> None:
    db, job = finished_store(tmp_path)
    other = "127.0.0.2"  # a loopback address, but not the default one: treated like any other interface
    refused = fedmq.run("dashboard", "--db", db, "--host", other, "--port", "8099")
    assert refused.returncode == 2 and "needs a token" in refused.stderr, refused.stderr
    token = "t0k3n-" + os.urandom(16).hex()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    proc, url = start_dashboard(fedmq, db, tmp_path / "token.log", "--token-file", str(token_file), host=other,
                                env={"FEDMQ_BROKER": ""})
    try:
        paths = ["/", f"/jobs/{job}", "/api/jobs", f"/api/jobs/{job}", "/api/events", "/metrics",
                 "/static/dashboard.js", "/static/uPlot.iife.min.js", "/nothing-here"]
        for path in paths:
            status, body = get(url + path)
            assert status == 401 and job.encode() not in body, (path, status)
            assert get(url + path, token="wrong-" + token)[0] == 401, path
        for path in paths[:4] + ["/metrics"]:
            assert get(url + path, token=token)[0] == 200, path
        # A browser opens /?token=... once: it gets a cookie and the address loses the token.
        browser.get(f"{url}/jobs/{job}?token={token}")
        wait_until(lambda: points(browser, "accuracy") == 1, 30, "the job page after the token")
        assert "token" not in browser.current_url
        assert token not in (tmp_path / "token.log").read_text()
        assert "TLS" in (tmp_path / "token.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=20)

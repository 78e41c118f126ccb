"""The monitor for real: Celery worker and two beats probing a mock upstream that goes away
and comes back, and the status page in headless Chromium."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings

from providers.mock_upstream import MockUpstreamThread

from .conftest import BASE_DIR, database_url, free_port, wait_for_log

INTERVAL_S = 2


class CeleryProcess:
    """A Celery worker or beat of the gateway, on the test database and Redis."""

    def __init__(self, role: str, redis_url: str, workdir: Path, **env):
        self.role = role
        args = [sys.executable, "-m", "celery", "-A", "llmgateway", role, "--loglevel", "INFO"]
        if role == "worker":
            args += ["--pool", "solo", "--without-heartbeat", "--without-gossip", "--without-mingle"]
        else:
            args += ["--schedule", str(workdir / f"beat-{free_port()}")]
        self.proc = subprocess.Popen(
            args, cwd=BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "DATABASE_URL": database_url(), "REDIS_URL": redis_url,
                 "DATA_DIR": str(settings.DATA_DIR), **env},
        )

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stdout.read().decode(errors="replace")


MONITOR_ENV = {
    "HEALTH_MIN_INTERVAL_S": "1",
    "HEALTH_DISPATCH_EVERY_S": "0.5",
    "HEALTH_DOWN_AFTER": "1",
    "HEALTH_UP_AFTER": "2",
    "GATEWAY_SNAPSHOT_POLL_S": "0.1",
}


@pytest.fixture
def upstream_port():
    return free_port()


@pytest.fixture
def monitored_model(monitoring_on, upstream_port, mock_upstream):
    """A model on its own upstream port, probed every INTERVAL_S; all of it removed afterwards."""
    from healthcheck.models import HealthTarget

    from .test_health_monitor import make_provider, make_route

    provider = make_provider(f"http://127.0.0.1:{upstream_port}/v1", name="flaky-upstream", timeout_s=2)
    route = make_route(provider, name="flaky-model", max_attempts=1)
    target = HealthTarget.objects.create(name="flaky-model", route=route, interval_s=INTERVAL_S, timeout_s=3)
    yield target
    route.delete()
    provider.delete()


@pytest.fixture
def celery(redis_url, tmp_path):
    started = []

    def start(role):
        process = CeleryProcess(role, redis_url, tmp_path, **MONITOR_ENV)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def wait_for_run(target, after_id: int, outcome: str, timeout: float):
    from healthcheck.models import HealthRun

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = HealthRun.objects.filter(target=target, pk__gt=after_id).order_by("pk").last()
        if run is not None and run.outcome == outcome:
            return run
        time.sleep(0.1)
    seen = list(HealthRun.objects.filter(target=target, pk__gt=after_id).values_list("outcome", "error_kind"))
    raise AssertionError(f"no {outcome} run within {timeout} s; saw {seen}")


def wait_until(condition, message: str, timeout: float = 2.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.05)


def test_probes_see_an_upstream_go_down_and_come_back_within_two_intervals(monitored_model, upstream_port, celery):
    from healthcheck import routing_state
    from healthcheck.models import HealthIncident, HealthRun

    target = monitored_model
    route_target_id = target.route.targets.get().pk
    upstream = MockUpstreamThread(port=upstream_port).start()
    celery("worker")
    celery("beat")
    celery("beat")  # a second beat: claims keep each slot probed once
    try:
        healthy = wait_for_run(target, 0, "healthy", timeout=30)  # first start of Celery is slow
        assert wait_for_log(healthy.request_id).virtual_key_id == _monitoring_key_id()

        upstream.stop()
        down = wait_for_run(target, healthy.pk, "down", timeout=2 * INTERVAL_S + 2)
        assert down.error_kind == "connection_refused"
        wait_until(lambda: routing_state.is_marked_down(route_target_id), "routing never saw the target down")

        upstream = MockUpstreamThread(port=upstream_port).start()
        back = wait_for_run(target, down.pk, "healthy", timeout=2 * INTERVAL_S + 2)
        assert back.latency_ms > 0
        wait_for_run(target, back.pk, "healthy", timeout=2 * INTERVAL_S + 2)
        wait_until(lambda: not routing_state.is_marked_down(route_target_id), "two good probes did not clear it")
    finally:
        upstream.stop()

    runs = list(HealthRun.objects.filter(target=target).order_by("scheduled_for"))
    slots = [run.scheduled_for for run in runs]
    assert len(slots) == len(set(slots))
    gaps = [(b - a).total_seconds() for a, b in zip(slots, slots[1:])]
    assert min(gaps) >= INTERVAL_S - 0.01  # two beats, yet no slot probed early or twice
    assert HealthIncident.objects.filter(target=target).exists()


def _monitoring_key_id():
    from healthcheck.models import MonitoringSettings

    return MonitoringSettings.load().monitoring_key_id


def test_turning_monitoring_off_stops_the_probes(monitored_model, upstream_port, celery):
    from healthcheck.models import HealthRun, MonitoringSettings

    upstream = MockUpstreamThread(port=upstream_port).start()
    celery("worker")
    celery("beat")
    try:
        wait_for_run(monitored_model, 0, "healthy", timeout=30)
        monitoring = MonitoringSettings.load()
        monitoring.enabled = False
        monitoring.save()
        time.sleep(1)  # a probe already queued may still finish
        count = HealthRun.objects.filter(target=monitored_model).count()
        time.sleep(2 * INTERVAL_S + 1)
        assert HealthRun.objects.filter(target=monitored_model).count() == count
    finally:
        upstream.stop()


# ---------------------------------------------------------------- the page in a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                   reason="headless Chromium not installed (.ci/browser-deps installs it)")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=420,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def status_gateway(gateway_factory):
    from django.core.management import call_command

    call_command("collectstatic", interactive=False, verbosity=0)  # WhiteNoise serves the vendored htmx
    return gateway_factory(HEALTH_STATUS_REFRESH_S="2", HEALTH_PUBLIC_RPM="1000")


@needs_browser
def test_the_status_page_renders_in_chromium_and_refreshes_itself(monitored_model, status_gateway, browser,
                                                                    screenshot_dir):
    from .test_health_monitor import make_run

    from healthcheck.models import HealthTarget
    from routing.models import Route

    from .test_health_monitor import make_route

    provider = monitored_model.route.targets.get().provider
    for minutes in range(50, 0, -5):
        make_run(monitored_model, minutes_ago=minutes, latency_ms=180.0)
    make_run(monitored_model, minutes_ago=0, outcome="down", error_kind="timeout", latency_ms=None)
    # Two more cards for the screenshot: a steady model with a day of history, and one that is down.
    steady = HealthTarget.objects.create(name="steady-model", route=make_route(provider, name="steady-model"))
    for minutes in range(24 * 60 - 30, 0, -30):
        failed = minutes // 30 % 19 == 3
        make_run(steady, minutes_ago=minutes, outcome="down" if failed else "healthy",
                 error_kind="upstream_5xx" if failed else "", latency_ms=None if failed else 350.0 + minutes % 7 * 40)
    broken = HealthTarget.objects.create(name="broken-model", route=make_route(provider, name="broken-model"))
    for minutes in range(180, 0, -10):
        failed = minutes <= 40
        make_run(broken, minutes_ago=minutes, outcome="down" if failed else "healthy",
                 error_kind="connection_refused" if failed else "", latency_ms=None if failed else 900.0)
    try:
        _look_at_the_page(browser, status_gateway, monitored_model, screenshot_dir)
    finally:
        Route.objects.filter(name__in=["steady-model", "broken-model"]).delete()


def _look_at_the_page(browser, status_gateway, monitored_model, screenshot_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(status_gateway.url + "/status")
    card = browser.find_element(By.CSS_SELECTOR, f'[data-target-id="{monitored_model.pk}"]')
    assert "flaky-model" in card.text and card.get_attribute("data-state") == "degraded"
    # One bar per probe interval (2 s, rounded up to the 5-minute rollup bucket): 288 bars,
    # drawn as same-coloured segments that grow by their number of bars, within the card.
    strip = card.find_element(By.CSS_SELECTOR, ".strip")
    assert strip.get_attribute("data-bars") == "288"
    segments = strip.find_elements(By.CSS_SELECTOR, "span")
    assert sum(int(s.value_of_css_property("flex-grow")) for s in segments) == 288
    assert strip.size["width"] <= card.size["width"]
    shot = screenshot_dir / "status.png"
    browser.save_screenshot(str(shot))

    # htmx swaps the cards in place: the page's own element stays, the timestamp moves on.
    first = browser.find_element(By.ID, "generated-at").get_attribute("datetime")
    browser.execute_script("document.body.dataset.marker = 'same page'")
    WebDriverWait(browser, 10).until(
        lambda b: b.find_element(By.ID, "generated-at").get_attribute("datetime") != first)
    assert browser.execute_script("return document.body.dataset.marker") == "same page"
    assert browser.execute_script("return typeof htmx") == "object"

    # The card's link leads to the model's own page, in the same language.
    browser.get(status_gateway.url + "/status?lang=zh-hans")
    browser.find_element(By.CSS_SELECTOR, f'[data-target-id="{monitored_model.pk}"] h2 a').click()
    assert "故障记录" in browser.page_source and "最近的检测" in browser.page_source
    browser.save_screenshot(str(shot.with_name("status-target-zh.png")))

"""The operator's first hour in headless Chromium: log in, switch to Chinese, add a provider from a
preset, test its connection against the mock upstream, fetch and import models, create a virtual key.

Needs chromium and chromedriver (.ci/browser-deps). Skipped when they are missing, unless
REQUIRE_BROWSER_TESTS=1. UPDATE_SCREENSHOTS=1 writes the README's screenshots to docs/screenshots/.
"""
import os
import shutil
from pathlib import Path

import pytest

from keys.models import VirtualKey
from providers.mock_upstream import MockUpstreamThread
from providers.models import CatalogEntry, Provider
from routing.models import RouteTarget

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("REQUIRE_BROWSER_TESTS") == "1":
        raise RuntimeError("chromium and chromedriver are required: run .ci/browser-deps")
    pytest.skip("chromium/chromedriver not installed (see .ci/browser-deps)", allow_module_level=True)

SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
UPSTREAM_SECRET = "sk-browser-test-upstream-secret-42Xy"
PASSWORD = "pw-for-browser-tests-only"


@pytest.fixture(scope="module")
def upstream():
    server = MockUpstreamThread(keys=[UPSTREAM_SECRET]).start()
    yield server
    server.stop()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1366,900", "--lang=en-US"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(2)
    yield driver
    driver.quit()


def wait_for(driver, css, timeout=10):
    return WebDriverWait(driver, timeout).until(EC.visibility_of_element_located((By.CSS_SELECTOR, css)))


def click(driver, css):
    """Scroll the element to the middle first: the admin's sticky save bar covers the bottom.
    Retried when htmx swaps the element out between finding and clicking it."""
    for attempt in range(3):
        try:
            element = wait_for(driver, css)
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
            WebDriverWait(driver, 5).until(EC.element_to_be_clickable((By.CSS_SELECTOR, css))).click()
            return
        except StaleElementReferenceException:
            if attempt == 2:
                raise


def log_in(driver, live_server, username):
    driver.get(f"{live_server.url}/admin/login/")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    wait_for(driver, ".gw-cards")


def switch_language(driver, code):
    """Through the user menu at the foot of the sidebar, as an operator would."""
    driver.find_element(By.CSS_SELECTOR, '[x-on\\:click="openUserLinks = !openUserLinks"]').click()
    form_button = f'form input[name="language"][value="{code}"] ~ button'
    WebDriverWait(driver, 5).until(EC.element_to_be_clickable((By.CSS_SELECTOR, form_button))).click()
    # The page is replaced under the wait: a stale <html> just means "look again".
    WebDriverWait(driver, 10, ignored_exceptions=[StaleElementReferenceException]).until(
        lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("lang") == code)


@pytest.mark.django_db(transaction=True)
def test_an_operators_first_hour_in_chinese(browser, live_server, upstream, django_user_model, screenshot_dir):
    django_user_model.objects.create_superuser("operator", "op@example.com", PASSWORD)
    log_in(browser, live_server, "operator")

    switch_language(browser, "zh-hans")
    assert "概览" in browser.page_source

    # Add a provider from a preset: a self-hosted vLLM, which here is the mock upstream.
    browser.find_element(By.LINK_TEXT, "从预设添加供应商").click()
    search = wait_for(browser, "#preset-search")
    search.send_keys("vllm")
    WebDriverWait(browser, 10).until(lambda d: not d.find_elements(By.CSS_SELECTOR, '[data-preset="openai"]'))
    click(browser, '[data-preset="vllm"]')
    base_url = wait_for(browser, "#id_base_url")
    assert base_url.get_attribute("value") == "http://localhost:8000/v1"
    base_url.clear()
    base_url.send_keys(upstream.base_url)
    name = browser.find_element(By.ID, "id_name")
    name.clear()
    name.send_keys("local-vllm")
    click(browser, "#keys-group a.add-row")
    wait_for(browser, 'input[name="keys-0-secret"]').send_keys(UPSTREAM_SECRET)
    browser.find_element(By.NAME, "keys-0-label").send_keys("main")
    click(browser, 'button[name="_continue"]')

    # Test its connection (htmx swaps the result in).
    click(browser, "#test-connection")
    outcome = wait_for(browser, "#connection-outcome")
    assert outcome.get_attribute("data-reason") == "ok", outcome.text
    assert "连接成功" in outcome.text and "毫秒" in outcome.text
    assert UPSTREAM_SECRET not in browser.page_source

    # Fetch and import two models, with routes of the same name.
    click(browser, "#fetch-models")
    wait_for(browser, "#import-models")
    for model in ("gpt-4o", "gpt-4o-mini"):
        click(browser, f'input[name="model"][value="{model}"]')
    click(browser, "#create-routes")
    browser.save_screenshot(str(screenshot_dir / "fetch-models-zh.png"))
    click(browser, "#import-selected")
    wait_for(browser, "#test-connection")
    assert "已导入 2 个模型" in browser.page_source
    provider = Provider.objects.get(name="local-vllm")
    assert (provider.type, provider.base_url) == ("openai", upstream.base_url)
    assert sorted(CatalogEntry.objects.filter(provider=provider).values_list("model_id", flat=True)) == \
        ["gpt-4o", "gpt-4o-mini"]
    assert CatalogEntry.objects.get(model_id="gpt-4o").input_price_per_m is not None
    assert RouteTarget.objects.filter(provider=provider).count() == 2

    # Create a virtual key: its secret is shown once.
    browser.get(f"{live_server.url}/admin/keys/virtualkey/add/")
    wait_for(browser, "#id_name").send_keys("first-app")
    click(browser, 'button[name="_save"]')
    secret = wait_for(browser, "#new-key-secret").get_attribute("value")
    assert secret.startswith("sk-gw-") and "请立即复制密钥" in browser.page_source
    key = VirtualKey.objects.get(name="first-app")
    browser.get(f"{live_server.url}/admin/keys/virtualkey/{key.pk}/change/")
    wait_for(browser, "#id_name")
    assert secret not in browser.page_source and key.prefix in browser.page_source

    # The README's screenshots, in English.
    switch_language(browser, "en")
    browser.get(f"{live_server.url}/admin/")
    wait_for(browser, ".gw-cards")
    browser.save_screenshot(str(screenshot_dir / "overview.png"))
    browser.get(f"{live_server.url}/admin/providers/provider/{provider.pk}/change/")
    click(browser, "#test-connection")
    wait_for(browser, "#connection-outcome")
    browser.execute_script("document.getElementById('provider-tools').scrollIntoView({block: 'center'})")
    browser.save_screenshot(str(screenshot_dir / "provider.png"))
    assert (screenshot_dir / "overview.png").stat().st_size > 10_000


def populate_a_busy_gateway():
    from django.utils import timezone

    from providers.catalog import import_models
    from providers.models import ProviderKey
    from routing.models import PromptRule, RequestLog, Route

    for name in ("openai-production-primary", "deepseek-mainland-backup"):
        provider = Provider.objects.create(name=name, base_url=f"https://{name}.example.com/v1")
        key = ProviderKey(provider=provider, label="primary-rotation-2026")
        key.set_secret(UPSTREAM_SECRET)
        key.save()
        import_models(provider, ["gpt-4o-mini-2024-07-18", "text-embedding-3-large", "deepseek-reasoner"],
                      create_routes=True)
    route = Route.objects.first()
    PromptRule.objects.create(route=route, operation="replace", pattern=r"\b(ACME|Acme Corp)\b",
                              text="a very long replacement text " * 5)
    keys = [VirtualKey(name=f"team-{i}-data-science-notebooks", rpm=600, budget_usd=250) for i in range(40)]
    for key in keys:
        key.set_key()
    VirtualKey.objects.bulk_create(keys)
    RequestLog.objects.bulk_create([RequestLog(
        request_id=f"req_{i:032x}", created_at=timezone.now(), endpoint="chat_completions", status=200 if i % 5 else 429,
        model_requested="gpt-4o-mini-2024-07-18", route="gpt-4o-mini-2024-07-18", provider="openai-production-primary",
        upstream_model="gpt-4o-mini-2024-07-18", latency_ms=1234.5, input_tokens=12345, output_tokens=678,
        cost_usd="0.00123456", virtual_key=keys[i % 40], error_kind="" if i % 5 else "rate_limited")
        for i in range(60)])


LIST_PAGES = ["providers/provider", "providers/providerkey", "providers/catalogentry", "routing/route",
              "routing/routetarget", "routing/promptrule", "routing/requestlog", "keys/virtualkey"]


@pytest.mark.django_db(transaction=True)
def test_list_pages_fit_a_laptop_screen_in_light_and_dark_mode(browser, live_server, django_user_model):
    django_user_model.objects.create_superuser("operator", "op@example.com", PASSWORD)
    populate_a_busy_gateway()
    log_in(browser, live_server, "operator")

    for theme in ("light", "dark"):
        if theme == "dark":
            browser.find_element(By.CSS_SELECTOR, '[x-on\\:click="openUserLinks = !openUserLinks"]').click()
            WebDriverWait(browser, 5).until(EC.element_to_be_clickable(
                (By.XPATH, "//nav//*[normalize-space(text())='Dark']"))).click()
            WebDriverWait(browser, 5, ignored_exceptions=[StaleElementReferenceException]).until(
                lambda d: "dark" in d.find_element(By.TAG_NAME, "html").get_attribute("class").split())
        for page in LIST_PAGES:
            browser.get(f"{live_server.url}/admin/{page}/")
            wait_for(browser, "#result_list")
            overflow = browser.execute_script(
                "const t = document.getElementById('result_list');"
                "return [document.documentElement.scrollWidth - window.innerWidth,"
                "        t.getBoundingClientRect().right - document.getElementById('content').getBoundingClientRect().right];")
            assert overflow[0] <= 0 and overflow[1] <= 1, f"{page} ({theme}) scrolls sideways by {overflow}"
            if os.environ.get("UPDATE_SCREENSHOTS") == "1" and page == "routing/requestlog" and theme == "dark":
                browser.save_screenshot(str(SCREENSHOTS / "request-log-dark.png"))
        assert "dark" in browser.find_element(By.TAG_NAME, "html").get_attribute("class").split() or theme == "light"


@pytest.mark.django_db(transaction=True)
def test_a_route_targets_model_suggestions_follow_its_provider(browser, live_server, django_user_model):
    django_user_model.objects.create_superuser("operator", "op@example.com", PASSWORD)
    from providers.catalog import import_models

    first = Provider.objects.create(name="first", base_url="https://first.example.com/v1")
    second = Provider.objects.create(name="second", base_url="https://second.example.com/v1")
    import_models(first, ["alpha-1", "alpha-2"])
    import_models(second, ["beta-1"])
    log_in(browser, live_server, "operator")

    browser.get(f"{live_server.url}/admin/routing/routetarget/add/")
    Select = __import__("selenium.webdriver.support.select", fromlist=["Select"]).Select
    Select(wait_for(browser, "#id_provider")).select_by_visible_text("second")
    click(browser, "#id_upstream_model")
    suggested = browser.execute_script(
        "return Array.from(document.getElementById('id_upstream_model-models').options).map(o => o.value)")
    assert suggested == ["beta-1"]


@pytest.mark.django_db(transaction=True)
def test_a_new_routes_prompt_rule_is_previewed_before_it_is_saved(browser, live_server, django_user_model,
                                                                  screenshot_dir):
    from routing.models import PromptRule, Route

    django_user_model.objects.create_superuser("operator", "op@example.com", PASSWORD)
    log_in(browser, live_server, "operator")

    # A new route with one prompt rule, typed but not saved.
    browser.get(f"{live_server.url}/admin/routing/route/add/")
    wait_for(browser, "#id_name").send_keys("claude-relay")
    click(browser, 'a[href="#prompt_rules"]')
    click(browser, "#prompt_rules-group a.add-row")
    Select = __import__("selenium.webdriver.support.select", fromlist=["Select"]).Select
    Select(wait_for(browser, 'select[name="prompt_rules-0-operation"]')).select_by_value("strip_billing_header")
    click(browser, "#prompt_rules-group a.add-row")
    Select(wait_for(browser, 'select[name="prompt_rules-1-operation"]')).select_by_value("system_append")
    browser.find_element(By.NAME, "prompt_rules-1-text").send_keys("Answer in English.")

    # Paste a Claude Code request and preview it (htmx swaps the diff in; nothing is saved).
    Select(wait_for(browser, "#preview-protocol")).select_by_value("messages")
    body = browser.find_element(By.ID, "preview-body")
    browser.execute_script("arguments[0].value = arguments[1]", body, (
        '{"model": "claude-relay", "max_tokens": 1024, "system": [\n'
        ' {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.38.713; cc_entrypoint=cli; cch=90d92;"},\n'
        ' {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],\n'
        ' "messages": [{"role": "user", "content": "List the files."}]}'))
    click(browser, "#preview-rules")
    diff = wait_for(browser, "#preview-diff")
    removed = [e.text for e in diff.find_elements(By.CSS_SELECTOR, ".gw-diff-del")]
    added = [e.text for e in diff.find_elements(By.CSS_SELECTOR, ".gw-diff-add")]
    assert any("x-anthropic-billing-header" in line for line in removed)
    assert any("You are Claude Code.\\n\\nAnswer in English." in line for line in added)
    assert not Route.objects.exists()
    browser.execute_script("document.getElementById('rule-preview').scrollIntoView({block: 'start'})")
    browser.save_screenshot(str(screenshot_dir / "preview.png"))

    # Saving keeps the rules the preview used.
    click(browser, 'button[name="_continue"]')
    wait_for(browser, "#relay-presets")
    assert list(PromptRule.objects.values_list("operation", flat=True)) == ["strip_billing_header", "system_append"]
    assert (screenshot_dir / "preview.png").stat().st_size > 10_000

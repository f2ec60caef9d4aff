"""The console in headless Chromium (Debian's `chromium` driven by Playwright; no Playwright browser download).

Each page loads for a super admin (charts are SVG with bars / lines), tenant users and anonymous
visitors are refused, and an override edit and a quota-request approval work through the UI.
Screenshots go to test-artifacts/ (git-ignored). Without /usr/bin/chromium these tests skip locally
and fail in CI (.ci/run installs it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command

from adminconsole.models import QuotaRequest
from metering.alerts.models import Notification
from metering.models import PolicyRule
from tests.adminconsole.conftest import CONSOLE_PAGES
from tests.conftest import PASSWORD

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts"

pytestmark = pytest.mark.django_db(transaction=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run the browser tests (.ci/run installs Debian's chromium).")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        _unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install -r requirements-dev.txt)")
    ARTIFACTS.mkdir(exist_ok=True)
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still sync.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
            yield chromium
            chromium.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


@pytest.fixture
def root(db):
    from tenants.models import User

    return User.objects.create_superuser(username="root-admin", email="root@example.com", password=PASSWORD)


def login(page, base: str, username: str, next_url: str = "/console/") -> None:
    page.goto(f"{base}/admin/login/?next={next_url}")
    page.fill("#id_username", username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_load_state()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


def test_every_page_loads_for_a_super_admin_with_charts(page, live_server, root, catalog):
    call_command("generate_usage", tenants=3, days=14, calls_per_day=8, stdout=open(os.devnull, "w"))
    login(page, live_server.url, "root-admin")
    assert page.url == f"{live_server.url}/console/"
    for template in CONSOLE_PAGES:
        path = template.format(slug="gen-00001")
        response = page.goto(live_server.url + path)
        assert response.status == 200, path
        assert page.locator("header.top .brand").inner_text() == "LLM Gateway console"
        name = path.strip("/").replace("/", "-") or "overview"
        shot(page, name)
    page.goto(live_server.url + "/console/")
    assert page.locator("svg.chart").count() == 4
    assert page.locator("svg.bar-chart rect.bar").count() > 14  # bars for two weeks of days
    assert page.locator("svg.hbar-chart rect.bar").count() == 3  # the three tenants
    for chart in page.locator("svg.chart").all():  # every chart has a title and labelled axes
        assert chart.locator("text.chart-title").count() == 1
        assert chart.locator("text.axis-label").count() >= 1 and chart.locator("text.tick").count() >= 3
    page.goto(live_server.url + "/console/tenants/gen-00001/")
    assert page.locator("svg.line-chart polyline.line").count() >= 1
    assert page.locator("svg.bar-chart rect.bar").count() > 0
    assert page.locator(".quota .bar-track").count() > 0
    box = page.locator("svg.bar-chart").first.bounding_box()
    assert box["width"] > 300 and box["height"] > 100  # rendered at a readable size


def test_tenant_users_and_anonymous_visitors_are_refused(page, live_server, tenant_admin, member):
    for path in ("/console/", f"/console/tenants/{tenant_admin.tenant.slug}/", "/console/quota-requests/"):
        page.goto(live_server.url + path)
        assert "/admin/login/" in page.url, path
    shot(page, "refused-anonymous")
    for persona in (tenant_admin, member):
        login(page, live_server.url, persona.user.username)
        assert "/admin/login/" in page.url  # the admin login takes staff only
        assert "staff account" in page.content()
        page.goto(live_server.url + "/console/reports/")
        assert "/admin/login/" in page.url
    shot(page, "refused-tenant-user")


def test_override_edit_through_the_ui(page, live_server, root, tenant_admin):
    slug = tenant_admin.tenant.slug
    login(page, live_server.url, "root-admin", f"/console/tenants/{slug}/")
    page.goto(f"{live_server.url}/console/tenants/{slug}/#overrides")  # the editor is folded; the link opens it
    form = page.locator("#override-form")
    form.locator("select[name=key]").select_option("tenant_tokens_per_day")
    form.locator("select[name=task]").select_option("LLM2_DRAFT")
    form.locator("input[name=value]").fill("777777")
    form.locator("input[name=note]").fill("browser test")
    form.locator("button").click()
    page.wait_for_load_state()
    assert "Override saved" in page.locator(".messages").inner_text()
    rule = PolicyRule.objects.get(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_tokens_per_day")
    assert (rule.value, rule.task.code, rule.note) == (777777, "LLM2_DRAFT", "browser test")
    assert page.locator("#overrides table input[name=value]").input_value() == "777777"
    assert f"tenant {slug}" in page.content()  # the effective limits name the override as their source
    # An invalid value is refused with the registry's message, and what was typed stays in the form.
    form = page.locator("#override-form")
    form.locator("select[name=key]").select_option("tenant_rpm")
    form.locator("input[name=value]").fill("plenty")
    form.locator("button").click()
    page.wait_for_load_state()
    assert "takes a whole number" in page.locator(".messages .error").inner_text()
    assert page.locator("#override-form input[name=value]").input_value() == "plenty"
    assert not PolicyRule.objects.filter(tenant=tenant_admin.tenant, key="tenant_rpm").exists()
    shot(page, "override-edit")


def test_quota_request_approval_through_the_ui(page, live_server, root, tenant_admin):
    created = tenant_admin.client.post("/api/quota-requests/", {"key": "tenant_rpm", "wanted_value": 900,
                                                                "reason": "launch week"}, format="json")
    assert created.status_code == 201
    request_id = created.json()["id"]
    login(page, live_server.url, "root-admin", "/console/quota-requests/")
    row = page.locator(f"#request-{request_id}")
    assert "launch week" in row.inner_text()
    row.locator("input[name=note]").fill("approved for launch")
    row.locator("button[value=approve]").click()
    page.wait_for_load_state()
    assert "approved" in page.locator(".messages .success").inner_text()
    decided = QuotaRequest.objects.get(pk=request_id)
    assert decided.status == "APPROVED" and decided.note == "approved for launch"
    assert PolicyRule.objects.get(scope="TENANT", tenant=tenant_admin.tenant, key="tenant_rpm").value == 900
    assert Notification.objects.filter(user=tenant_admin.user, kind="QUOTA_REQUEST_APPROVED").exists()
    page.goto(live_server.url + "/console/quota-requests/?status=APPROVED")
    assert "APPROVED" in page.locator(f"#request-{request_id}").inner_text()
    shot(page, "quota-request-approved")


def test_rollout_report_and_the_switch_to_hard_through_the_ui(page, live_server, root, tenant_admin, member):
    from concurrent.futures import ThreadPoolExecutor

    from tenants.models import Tenant
    from tests.metering.test_rollout import chat, shadow_traffic

    def off_loop(fn, *args):  # /v1 calls run async_to_sync: not in this thread, where Playwright's loop runs
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(fn, *args).result()

    off_loop(shadow_traffic, tenant_admin, member)
    slug = tenant_admin.tenant.slug
    login(page, live_server.url, "root-admin", "/console/rollout/")
    assert "Switching to HARD would have refused 3 calls" in page.locator("#rollout-total-summary").inner_text()
    row = page.locator(f'#rollout-tenants tr[data-tenant="{slug}"]')
    assert "SHADOW" in row.inner_text() and "quota_exceeded 3" in row.inner_text()
    assert page.locator("#rollout-total table.rollout-by-rule tr").count() == 4  # header + three rules
    shot(page, "rollout")
    page.goto(f"{live_server.url}/console/tenants/{slug}/")
    panel = page.locator("#rollout")
    assert "would have refused 3 calls" in panel.locator("#rollout-summary").inner_text()
    panel.locator('button[data-mode="HARD"]').click()
    page.wait_for_load_state()
    assert f"Tenant {slug} is now in HARD" in page.locator(".messages .success").inner_text()
    assert page.locator("#rollout-mode").inner_text() == "HARD"
    assert Tenant.objects.get(slug=slug).enforcement_mode == "HARD"
    shot(page, "rollout-tenant-switched")
    assert off_loop(chat, member).status_code == 429  # HARD refuses what the report said it would


def test_live_pages_update_themselves_without_a_reload(page, live_server, root, tenant_admin, settings):
    """New usage shows up on the overview and the tenant page by polling, with no page load in between."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    from tests.metering.test_apis import chat as chat_call

    def chat(persona, **kwargs):
        # /v1 goes through the ASGI app under async_to_sync, which cannot run in Playwright's loop thread.
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(chat_call, persona, **kwargs).result()

    settings.CONSOLE_POLL_SECONDS = 1
    slug = tenant_admin.tenant.slug
    login(page, live_server.url, "root-admin", "/console/")
    assert page.locator("#kpi-requests").inner_text() == "0"
    page.evaluate("window.__sameDocument = true")  # a reload would drop this
    assert chat(tenant_admin).status_code == 200
    page.wait_for_function("document.querySelector('#kpi-requests').innerText === '1'", timeout=10_000)
    assert page.evaluate("window.__sameDocument") is True
    assert page.locator("#provider-health-summary").inner_text().count("offline") >= 1
    shot(page, "overview-live")

    page.goto(f"{live_server.url}/console/tenants/{slug}/?granularity=hour")
    charts = page.locator("#tenant-charts")
    drawn = charts.inner_html()  # this hour already has a bar (the first call): the new call makes it taller
    stamp = page.locator("#tenant-stamp").inner_text()
    page.evaluate("window.__sameDocument = true")
    assert chat(tenant_admin, content="Another draft").status_code == 200
    page.wait_for_function("document.querySelector('#tenant-stamp').innerText !== " + repr(stamp), timeout=10_000)
    page.wait_for_function("document.querySelector('#tenant-charts').innerHTML !== " + json.dumps(drawn),
                           timeout=10_000)
    assert page.evaluate("window.__sameDocument") is True
    assert "Tokens per hour, by task" in charts.inner_text()
    shot(page, "tenant-detail-hourly-live")

    page.goto(f"{live_server.url}/console/?granularity=hour")
    assert page.locator("svg.bar-chart rect.bar").count() >= 3  # this hour's bar in each of the three charts
    shot(page, "overview-hourly")
    page.goto(f"{live_server.url}/console/providers/?window=24h")
    assert page.locator("#provider-health tr[data-model]").count() >= 1
    shot(page, "providers-24h")

"""The coordinators' dashboard in a real headless Chromium, against the real coordinator.

The coordinator runs on a real uvicorn server over the real broker and PostgreSQL (the
`coordinator` fixture); the pages get every figure from its JSON API and its task stream.
Screenshots of each test's page go to `test-artifacts/screenshots/<test>.png`.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer
from playwright.async_api import Browser, Page, Route, async_playwright, expect

from shared.contract import Classification, Determination, Reason, Status, TrialOutcome
from shared.topics import EVENTS
from tests.conftest import ARTIFACTS, remember_patient_ids
from tests.integration.test_coordinator import (
    TOKENS,
    auth,
    coordinator,  # noqa: F401  (the fixture)
    decided,
    publish,
    read_stream,
    tasks_of,
)
from tests.samples import valid_event
from tests.unit.coordinator.coordinator_samples import identified, trial

pytestmark = pytest.mark.integration

SCREENSHOTS = ARTIFACTS / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture
def server(coordinator):  # noqa: F811  (the imported fixture)
    """An HTTP client to the coordinator serving the dashboard (`client.base_url`)."""
    return coordinator


@pytest.fixture(scope="module")
async def browser():
    """One headless Chromium for the module (each test gets its own context)."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        await chromium.close()


@pytest.fixture
async def page(browser: Browser, request):
    """A fresh page (empty session storage); fails the test on any script error in it."""
    context = await browser.new_context(viewport={"width": 1440, "height": 960})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else None,
    )
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=SCREENSHOTS / f"{request.node.name}.png", full_page=True)
    await context.close()
    # Refused calls (a wrong token, an unknown patient) are the tests' own to check.
    assert [error for error in errors if not error.startswith("Failed to load resource")] == []


async def sign_in(page: Page, client, path: str = "/dashboard", role: str = "admin") -> None:
    await page.goto(f"{client.base_url}{path}")
    await page.fill("#token", TOKENS[role])
    await page.click("#sign-in-form button[type=submit]")
    await expect(page.locator("#app")).to_be_visible()


def card(page: Page, task_id: str, state: str | None = None):
    column = f'.column[data-state="{state}"] ' if state else ""
    return page.locator(f'{column}[data-task-id="{task_id}"]')


async def publish_events(settings, *events: dict) -> None:
    """Clinical events onto `pain.events.v1`, keyed by patient, as the gateway publishes them."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    for event in events:
        body = json.dumps(event).encode()
        remember_patient_ids(body)  # the run's logs are searched for it at the end
        await producer.send_and_wait(
            EVENTS.full_name(settings.kafka_topic_prefix),
            key=event["data"]["patient_id"].encode(),
            value=body,
        )
    await producer.stop()


def confirmed(patient: str, classification=Classification.NEUROPATHIC) -> Determination:
    return decided(patient, Status.REFRACTORY_CONFIRMED, classification=classification)


async def test_the_board_shows_the_tasks_the_api_holds(server, settings, page):
    patient = "pt-dash-board-01"
    await publish(settings, confirmed(patient))
    tasks = await tasks_of(server, patient)

    await sign_in(page, server)

    for task in tasks:
        shown = card(page, task["id"], "proposed")
        await expect(shown.locator(".card-title")).to_have_text(task["title"])
        await expect(shown.locator(".card-patient")).to_have_text(patient)
    await expect(page.locator('.column[data-state="proposed"] .count')).to_have_text(
        str(len(tasks))
    )
    await expect(page.locator("#live")).to_have_text("Live")

    await page.select_option("#filter-role", "pharmacist")
    await page.click("#filters button[type=submit]")
    pharmacy = [task for task in tasks if task["role"] == "pharmacist"]
    await expect(page.locator(".card")).to_have_count(len(pharmacy))
    await expect(page).to_have_url(f"{server.base_url}/dashboard?role=pharmacist")
    await page.click("#filter-clear")
    await expect(page.locator(".card")).to_have_count(len(tasks))


async def test_accepting_starting_and_completing_in_the_page_changes_the_task(
    server, settings, page
):
    patient = "pt-dash-flow-01"
    await publish(settings, confirmed(patient))
    conference = next(t for t in await tasks_of(server, patient) if t["key"] == "case_conference")
    await sign_in(page, server)

    await card(page, conference["id"]).get_by_role("button", name="Accept").click()
    await card(page, conference["id"], "accepted").get_by_role("button", name="Start").click()
    await card(page, conference["id"], "in_progress").get_by_role("button", name="Complete").click()
    await card(page, conference["id"]).locator(".outcome-input").fill("Plan agreed: SCS work-up")
    await card(page, conference["id"]).get_by_role("button", name="Save outcome").click()

    await expect(card(page, conference["id"], "completed")).to_contain_text(
        "Plan agreed: SCS work-up"
    )
    task = (await server.get(f"/v1/tasks/{conference['id']}", headers=auth("admin"))).json()
    assert task["state"] == "completed"
    assert task["outcome"] == "Plan agreed: SCS work-up"
    history = (
        await server.get(f"/v1/tasks/{conference['id']}/history", headers=auth("admin"))
    ).json()
    assert [(h["change"], h["actor"]) for h in history][-3:] == [
        ("accept", "admin-user"),
        ("start", "admin-user"),
        ("complete", "admin-user"),
    ]


async def test_a_change_made_through_the_api_reaches_the_open_board_live(server, settings, page):
    patient = "pt-dash-live-01"
    await publish(settings, confirmed(patient))
    tasks = await tasks_of(server, patient)
    await sign_in(page, server)
    await expect(page.locator("#live")).to_have_text("Live")
    await page.evaluate("window.notReloaded = true")

    response = await server.post(f"/v1/tasks/{tasks[0]['id']}/accept", headers=auth("admin"))
    assert response.status_code == 200
    another = "pt-dash-live-02"
    await publish(settings, confirmed(another, Classification.NOCICEPTIVE))
    new_tasks = await tasks_of(server, another)

    await expect(card(page, tasks[0]["id"], "accepted")).to_be_visible()
    for task in new_tasks:
        await expect(card(page, task["id"], "proposed")).to_be_visible()
    assert await page.evaluate("window.notReloaded") is True


async def test_after_a_disconnect_the_board_resumes_from_the_last_event_and_misses_nothing(
    server, settings, page
):
    patient = "pt-dash-resume-01"
    await publish(settings, confirmed(patient))
    tasks = await tasks_of(server, patient)
    last = 2 * len(tasks)  # each task was created, then scheduled
    [(sequence, change, payload)] = await read_stream(
        server, auth("admin") | {"Last-Event-ID": str(last - 1)}, 1
    )
    resumed_with: list[str | None] = []
    accepted = asyncio.Event()

    async def stream(route: Route) -> None:
        if not resumed_with and route.request.headers.get("last-event-id") is None:
            # The first connection delivers the last change, then drops.
            body = f"retry: 200\n\nid: {sequence}\nevent: {change}\ndata: {json.dumps(payload)}\n\n"
            resumed_with.append(None)
            await route.fulfill(status=200, content_type="text/event-stream", body=body)
            return
        resumed_with.append(route.request.headers.get("last-event-id"))
        await accepted.wait()  # a change happens while the board is disconnected
        await route.continue_()

    await page.route("**/v1/stream", stream)
    await sign_in(page, server)
    await expect(page.locator("#live")).to_have_text("Reconnecting…")

    response = await server.post(f"/v1/tasks/{tasks[0]['id']}/accept", headers=auth("admin"))
    assert response.status_code == 200
    accepted.set()

    await expect(card(page, tasks[0]["id"], "accepted")).to_be_visible()
    await expect(page.locator("#live")).to_have_text("Live")
    assert resumed_with[:2] == [None, str(last)]


async def test_the_patient_page_explains_the_determination_and_plots_the_timeline(
    server, settings, page
):
    patient = "pt-dash-plot-01"
    events = [
        valid_event("pain.condition.recorded.v1", patient_id=patient, time="2025-09-01T09:00:00Z"),
        *(
            valid_event(
                "pain.score.recorded.v1", patient_id=patient, score=score, time=f"{day}T09:00:00Z"
            )
            for day, score in (
                ("2026-01-05", 8),
                ("2026-01-26", 7),
                ("2026-02-16", 7),
                ("2026-03-09", 8),
                ("2026-03-30", 6),
                ("2026-04-20", 7),
            )
        ),
        valid_event(
            "pain.trial.started.v1",
            patient_id=patient,
            trial_id="t-gaba",
            drug="gabapentin",
            daily_dose=900,
            time="2026-01-06T10:00:00Z",
        ),
        valid_event(
            "pain.trial.dose_changed.v1",
            patient_id=patient,
            trial_id="t-gaba",
            daily_dose=1800,
            time="2026-01-27T10:00:00Z",
        ),
        valid_event(
            "pain.trial.stopped.v1",
            patient_id=patient,
            trial_id="t-gaba",
            reason="ineffective",
            time="2026-03-02T10:00:00Z",
        ),
        valid_event(
            "pain.trial.started.v1",
            patient_id=patient,
            trial_id="t-dulox",
            drug="duloxetine",
            daily_dose=60,
            time="2026-03-03T10:00:00Z",
        ),
        valid_event(
            "pain.side_effect.reported.v1",
            patient_id=patient,
            trial_id="t-gaba",
            effect="somnolence",
            severity="moderate",
            time="2026-02-02T10:00:00Z",
        ),
        valid_event(
            "pain.side_effect.reported.v1",
            patient_id=patient,
            trial_id="t-dulox",
            effect="nausea",
            severity="severe",
            intolerable=True,
            time="2026-04-06T10:00:00Z",
        ),
    ]
    trials = [
        trial("gabapentin", TrialOutcome.FAILED, "t-gaba"),
        trial("duloxetine", TrialOutcome.INTOLERANT, "t-dulox"),
    ]
    suspected = decided(
        patient, Status.REFRACTORY_SUSPECTED, classification=Classification.NEUROPATHIC
    ).model_copy(update={"as_of": datetime(2026, 3, 2, 12, tzinfo=UTC)})
    final = identified(
        decided(
            patient,
            Status.REFRACTORY_CONFIRMED,
            classification=Classification.NEUROPATHIC,
            trials=trials,
        ).model_copy(
            update={
                "as_of": datetime(2026, 4, 21, 12, tzinfo=UTC),
                "failed_drugs": ["duloxetine", "gabapentin"],
                "reasons": [
                    Reason(code="trial.failed", text="gabapentin failed: pain 8 -> 7, below 30 %"),
                    Reason(code="trial.intolerant", text="duloxetine stopped by severe nausea"),
                ],
            }
        )
    )
    await publish_events(settings, *events)
    await publish(settings, suspected, final)
    await tasks_of(server, patient)
    await timeline_of(server, patient, scores=6, trials=2, statuses=2)

    await sign_in(page, server)
    await page.locator(".card-patient", has_text=patient).first.click()  # signed in still
    await expect(page).to_have_url(f"{server.base_url}/dashboard/patients/{patient}")

    await expect(page.locator("#patient-status")).to_have_text("Refractory confirmed")
    await expect(page.locator("#reasons li")).to_have_text(
        ["gabapentin failed: pain 8 -> 7, below 30 %", "duloxetine stopped by severe nausea"]
    )
    await expect(page.locator("#figures")).to_contain_text("duloxetine, gabapentin")
    plot = page.locator("#timeline svg")
    await expect(plot.locator(".scores path.score-line")).to_have_count(1)
    await expect(plot.locator(".scores circle.score-point")).to_have_count(6)
    await expect(plot.locator('.trial[data-trial-id="t-gaba"] rect.trial-dose')).to_have_count(2)
    await expect(plot.locator('.trial[data-trial-id="t-dulox"] rect.trial-dose')).to_have_count(1)
    await expect(plot.locator(".dose-label")).to_contain_text(["900 mg/day", "1800 mg/day"])
    await expect(plot.locator(".determinations line.determination-line")).to_have_count(2)
    await expect(plot.locator(".determination-label")).to_have_text(
        ["Refractory suspected", "Refractory confirmed"]
    )
    await expect(plot.locator(".side-effects .side-effect-severe")).to_have_count(1)
    await expect(plot.locator(".side-effects .side-effect-mild")).to_have_count(1)
    await expect(plot.locator("title").first).to_contain_text("Timeline")
    assert await plot.get_attribute("role") == "img"
    plan = page.locator("#plan tbody tr")
    await expect(plan.first).to_be_visible()


async def timeline_of(client, patient: str, scores: int, trials: int, statuses: int) -> dict:
    """The patient's timeline once the server has taken in every event and determination."""
    for _ in range(150):
        response = await client.get(f"/v1/patients/{patient}/timeline", headers=auth("admin"))
        if response.status_code == 200:
            body = response.json()
            if (len(body["scores"]), len(body["trials"]), len(body["determinations"])) == (
                scores,
                trials,
                statuses,
            ):
                return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"the timeline did not fill: {response.status_code} {response.text}")


async def test_a_patient_without_data_shows_an_empty_plot(server, page):
    await sign_in(page, server, "/dashboard/patients/pt-dash-nobody-01")

    await expect(page.locator("#notice")).to_contain_text("no determination")
    await expect(page.locator("#timeline svg")).to_contain_text("No data yet")


async def test_a_wrong_token_shows_the_sign_in_error(server, page):
    await page.goto(f"{server.base_url}/dashboard")
    await page.fill("#token", "not-a-token")
    await page.click("#sign-in-form button[type=submit]")

    await expect(page.locator("#sign-in-error")).to_have_text(
        "That token was not accepted. Check it and try again."
    )
    await expect(page.locator("#app")).to_be_hidden()

    # A token revoked while signed in brings back the sign-in form, saying so.
    await page.evaluate("sessionStorage.setItem('painpath.token', 'revoked-token')")
    await page.reload()
    await expect(page.locator("#sign-in-error")).to_contain_text("not accepted")
    await expect(page.locator("#sign-in")).to_be_visible()

"""Chat in a real browser: from a vector to a streamed, steered conversation and back after a reload."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.browser.conftest import TIMEOUT_MS, Held, LiveServer, finished

TIMEOUT = TIMEOUT_MS

# Set before sending: notes (in sessionStorage)
# whether each pane showed text while its reply was still live.
WATCH_STREAMING = """() => {
  sessionStorage.clear();
  new MutationObserver(() => {
    for (const pane of ["steered", "unsteered"]) {
      const live = document.querySelector(`#pane-${pane} .message[data-live] .text`);
      if (live && live.textContent.length > 0) sessionStorage.setItem(`partial-${pane}`, "1");
    }
  }).observe(document.querySelector("#chat"), {subtree: true, childList: true, characterData: true});
}"""
# Stored replies carry their settings; live ones do not. Earlier replies of a turn answered again stay.
FINISHED = "#pane-{pane} .message.assistant:not(.superseded) .hint"
EARLIER = "#pane-{pane} .message.assistant.superseded .text"


def set_field(page: Page, selector: str, value: str) -> None:
    """Change one panel field the way a user does; the panel posts itself and is swapped in anew."""
    page.fill(selector, value)
    page.locator(selector).dispatch_event("change")
    page.wait_for_load_state("networkidle")
    expect(page.locator(selector)).to_have_value(value)


def last_replies(page: Page) -> tuple[str, str]:
    steered = page.locator("#pane-steered .message.assistant .text").last.text_content() or ""
    unsteered = page.locator("#pane-unsteered .message.assistant .text").last.text_content() or ""
    return steered, unsteered


def test_chat_with_a_vector(page: Page, live: LiveServer, api: httpx.Client, shots: Path) -> None:
    page.set_default_timeout(TIMEOUT)
    r = api.post(
        "/api/runs",
        json={"prompts": ["Hello."], "n_vectors": 1, "method": "random", "radius": 8.0},
    )
    job = r.json()["job"]["id"]
    finished(api, job)
    vector = api.get(f"/api/runs/{r.json()['run_id']}/vectors").json()[0]["id"]

    page.goto(f"{live.url}/vectors/{vector}")
    page.click("#chat-with-vector")
    page.wait_for_url(re.compile(r"/chat/\d+$"))
    chat_url = page.url
    named = f"Chat: vector #{vector} (run #{r.json()['run_id']})"  # what it is, in words
    expect(page).to_have_title(f"{named} · steerscope")
    expect(page.locator("h1")).to_contain_text(named)
    expect(page.locator(".term")).to_have_count(1)
    set_field(page, "#steering input[name=max_new_tokens]", "50")  # two turns fit the tiny context
    set_field(page, "#steering input[name=temperature]", "1.0")
    page.fill("#message", "Tell me about the sea.")
    page.evaluate("() => { window.sameDocument = true; }")  # gone if the page loads again
    held = Held(page, f"{live.url}/api/conversations/*/messages")
    with page.expect_request(re.compile(r"/api/conversations/\d+/messages$")):
        page.click("#send")
    expect(page.locator("#send")).to_be_disabled()  # the server asks the worker to check the chat
    expect(page.locator("#send")).to_have_text("working…")
    held.release()
    expect(page.locator("#send")).to_have_text("Send")
    # Stored replies carry a hint with their settings: swapped in place when the reply is done.
    expect(page.locator(FINISHED.format(pane="unsteered"))).to_have_count(1, timeout=TIMEOUT)
    expect(page.locator(".message[data-live]")).to_have_count(0)
    assert page.evaluate("() => window.sameDocument === true"), "the page loaded again at the reply's end"
    page.screenshot(path=shots / "08-chat.png", full_page=True)
    first_steered, first_unsteered = last_replies(page)

    # Scale 0, then answer the first message again: both panes share its history, so the steered
    # reply must equal the unsteered one for the same seed.
    set_field(page, "#steering input.scale", "0")
    expect(page.locator(".term .norm")).to_contain_text("effective norm 0")
    page.click("#regenerate")
    expect(page.locator(FINISHED.format(pane="steered")).last).to_contain_text("× 0.0", timeout=TIMEOUT)
    expect(page.locator(".message[data-live]")).to_have_count(0)
    assert page.locator("#chat-error").text_content() == ""
    steered, unsteered = last_replies(page)
    assert steered and steered == unsteered
    # The replies it answered again are still there, marked as earlier replies.
    expect(page.locator(EARLIER.format(pane="steered"))).to_have_text(first_steered)
    expect(page.locator(EARLIER.format(pane="unsteered"))).to_have_text(first_unsteered)
    page.screenshot(path=shots / "08b-chat-regenerated.png", full_page=True)
    page.fill("#message", "And about the sky?")
    page.click("#send")
    expect(page.locator(FINISHED.format(pane="steered"))).to_have_count(2, timeout=TIMEOUT)

    page.goto(f"{live.url}/chat")
    page.click(f"a[href='{chat_url.removeprefix(live.url)}']")
    expect(page.locator("#pane-steered .message.user")).to_have_count(2)
    page.screenshot(path=shots / "09-chat-reopened.png", full_page=True)


def test_tokens_stream_into_both_panes_before_the_reply_is_done(
    page: Page, live: LiveServer, api: httpx.Client
) -> None:
    page.set_default_timeout(TIMEOUT)
    r = api.post("/api/conversations", json={})
    cid = r.json()["id"]
    body = {"terms": [], "settings": {**r.json()["settings"], "max_new_tokens": 150, "temperature": 1.0}}
    api.put(f"/api/conversations/{cid}/steering", json=body)
    page.goto(f"{live.url}/chat/{cid}")
    page.evaluate(WATCH_STREAMING)
    page.fill("#message", "Write a long story.")
    page.click("#send")
    expect(page.locator(FINISHED.format(pane="steered"))).to_have_count(1, timeout=TIMEOUT)
    seen = page.evaluate(
        "() => [sessionStorage.getItem('partial-steered'), sessionStorage.getItem('partial-unsteered')]"
    )
    assert seen == ["1", "1"], "no pane showed text before its reply was complete"

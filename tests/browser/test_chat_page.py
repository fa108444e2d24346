"""Chat in a real browser: from a vector to a streamed, steered conversation and back after a reload."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.app.conftest import wait_for
from tests.browser.conftest import LiveServer

TIMEOUT = 120_000

# Set before sending: notes (in sessionStorage, which outlives the reload at the end of a reply)
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
FINISHED = "#pane-{pane} .message.assistant .hint"  # stored replies carry their settings; live ones not


def last_replies(page: Page) -> tuple[str, str]:
    steered = page.locator("#pane-steered .message.assistant .text").last.text_content() or ""
    unsteered = page.locator("#pane-unsteered .message.assistant .text").last.text_content() or ""
    return steered, unsteered


def test_chat_with_a_vector(page: Page, live: LiveServer, shots: Path) -> None:
    page.set_default_timeout(TIMEOUT)
    r = httpx.post(
        f"{live.url}/api/runs",
        json={"prompts": ["Hello."], "n_vectors": 1, "method": "random", "radius": 8.0},
    )
    job = r.json()["job"]["id"]
    wait_for(lambda: httpx.get(f"{live.url}/api/jobs/{job}").json()["status"] == "succeeded")
    vector = httpx.get(f"{live.url}/api/runs/{r.json()['run_id']}/vectors").json()[0]["id"]

    page.goto(f"{live.url}/vectors/{vector}")
    page.click("#chat-with-vector")
    page.wait_for_url(re.compile(r"/chat/\d+$"))
    chat_url = page.url
    expect(page.locator(".term")).to_have_count(1)
    page.fill("input[name=max_new_tokens]", "120")
    page.fill("input[name=temperature]", "1.0")
    page.locator("input[name=temperature]").dispatch_event("change")
    expect(page.locator("input[name=max_new_tokens]")).to_have_value("120")
    page.evaluate(WATCH_STREAMING)
    page.fill("#message", "Tell me about the sea.")
    page.click("#send")
    page.wait_for_load_state()  # the page reloads itself when the reply is done
    expect(page.locator(".message[data-live]")).to_have_count(0)
    page.wait_for_function(
        "() => document.querySelectorAll('#pane-unsteered .message.assistant').length === 1"
    )
    page.screenshot(path=shots / "08-chat.png", full_page=True)

    # Scale 0 from the next reply on: the steered pane answers exactly like the unsteered one.
    page.locator("input.scale").fill("0")
    page.locator("input.scale").dispatch_event("change")
    expect(page.locator(".term .norm")).to_contain_text("effective norm 0")
    page.fill("#message", "And about the sky?")
    page.click("#send")
    page.wait_for_function(
        "() => document.querySelectorAll('#pane-steered .message.assistant').length === 2"
        " && !document.querySelector('.message[data-live]')"
    )
    steered, unsteered = last_replies(page)
    assert steered and steered == unsteered

    page.goto(f"{live.url}/chat")
    page.click(f"a[href='{chat_url.removeprefix(live.url)}']")
    expect(page.locator("#pane-steered .message.user")).to_have_count(2)
    page.screenshot(path=shots / "09-chat-reopened.png", full_page=True)


def test_tokens_stream_into_both_panes_before_the_reply_is_done(page: Page, live: LiveServer) -> None:
    page.set_default_timeout(TIMEOUT)
    r = httpx.post(f"{live.url}/api/conversations", json={})
    cid = r.json()["id"]
    body = {"terms": [], "settings": {**r.json()["settings"], "max_new_tokens": 150, "temperature": 1.0}}
    httpx.put(f"{live.url}/api/conversations/{cid}/steering", json=body)
    page.goto(f"{live.url}/chat/{cid}")
    page.evaluate(WATCH_STREAMING)
    page.fill("#message", "Write a long story.")
    page.click("#send")
    page.wait_for_function(
        "() => window.partialSeen && window.partialSeen.steered && window.partialSeen.unsteered"
    )

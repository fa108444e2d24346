// The chat page: send a message, stream the reply into both panes, stop, regenerate, and pick a
// reply in progress back up after a reload. When a reply ends, the panes are fetched again as
// stored (with each reply's steering and finish reason) and swapped in place: no page load.
"use strict";

(() => {
  const root = document.getElementById("chat");
  const id = root.dataset.conversation;
  const errorBox = document.getElementById("chat-error");
  let source = null;
  const busy = window.steerscopeBusy;

  // The stored panes in place of the streamed ones (the composer and what is typed there stay).
  function settle() {
    return htmx.ajax("GET", `/chat/${id}/panes`, { target: "#panes", swap: "outerHTML" });
  }

  function bubble(pane, role, text, live) {
    const box = document.querySelector(`#pane-${pane} .messages`);
    const div = document.createElement("div");
    div.className = `message ${role}`;
    if (live) div.dataset.live = "";
    const p = document.createElement("p");
    p.className = "text";
    p.textContent = text;  // model output is text, never markup
    div.appendChild(p);
    box.appendChild(div);
    return p;
  }

  function liveText(pane) {
    const live = document.querySelector(`#pane-${pane} .message[data-live] .text`);
    return live || bubble(pane, "assistant", "", true);
  }

  function follow() {
    if (source) source.close();
    source = new EventSource(`/api/conversations/${id}/stream`);
    source.addEventListener("snapshot", (event) => {
      const data = JSON.parse(event.data);
      if (!data.live) {  // finished before we connected: the stored reply is the one to show
        source.close();
        source = null;
        if (document.querySelector(".message[data-live]")) settle();
        return;
      }
      for (const [pane, text] of Object.entries(data.panes)) liveText(pane).textContent = text;
    });
    source.addEventListener("tokens", (event) => {  // one decoding step: {pane: text}
      for (const [pane, text] of Object.entries(JSON.parse(event.data).panes)) liveText(pane).textContent += text;
    });
    source.addEventListener("done", (event) => {
      source.close();
      source = null;
      const data = JSON.parse(event.data);
      if (data.error) {  // what was shown stays, with why; the stored messages are what a reload shows
        errorBox.textContent = data.error;
        for (const live of document.querySelectorAll(".message[data-live]")) delete live.dataset.live;
        return;
      }
      settle();  // the stored messages, with their steering and finish reasons
    });
  }

  // A call to the server (which asks the worker to check the chat first): its button is busy meanwhile.
  async function post(path, body, button) {
    busy.on(button);
    try {
      return await send(path, body);
    } finally {
      busy.off(button);
    }
  }

  async function send(path, body) {
    errorBox.textContent = "";
    const csrf = document.querySelector('meta[name="csrf-token"]')?.content;
    const headers = { "content-type": "application/json", ...(csrf ? { "X-CSRF-Token": csrf } : {}) };
    const response = await fetch(`/api/conversations/${id}/${path}`, {
      method: "POST", headers, body: JSON.stringify(body || {}),
    });
    if (!response.ok) {
      const data = await response.json().catch(() => ({ detail: response.statusText }));
      errorBox.textContent = data.detail;
      return false;
    }
    return true;
  }

  document.getElementById("composer").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("message");
    const content = input.value;
    if (!(await post("messages", { content }, document.getElementById("send")))) return;
    input.value = "";
    for (const pane of ["steered", "unsteered"]) {
      if (document.getElementById(`pane-${pane}`).hidden) continue;
      bubble(pane, "user", content, false);
      bubble(pane, "assistant", "", true);
    }
    follow();
  });
  document.getElementById("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      document.getElementById("composer").requestSubmit();
    }
  });
  document.getElementById("stop").addEventListener("click", (event) => post("stop", {}, event.currentTarget));
  document.getElementById("regenerate").addEventListener("click", async (event) => {
    if (!(await post("regenerate", {}, event.currentTarget))) return;
    // The earlier reply stays, marked as such; the new one streams in below it.
    for (const pane of ["steered", "unsteered"]) {
      const box = document.querySelector(`#pane-${pane} .messages`);
      if (document.getElementById(`pane-${pane}`).hidden || !box) continue;
      const last = box.lastElementChild;
      if (last && last.classList.contains("assistant")) last.classList.add("superseded");
      bubble(pane, "assistant", "", true);
    }
    follow();
  });
  // Hiding the unsteered pane is a setting: show the change at once, the panel stores it.
  document.addEventListener("change", (event) => {
    if (event.target.id === "show-unsteered") {
      document.getElementById("pane-unsteered").hidden = !event.target.checked;
    }
  });

  if (document.querySelector(".message[data-live]")) follow();  // a reload during a reply
})();

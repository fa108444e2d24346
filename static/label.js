// The labeling queue, driven from the keyboard: 1-9 toggle labels, n note, j/k or arrows move,
// Enter submits and moves on, u undoes the last change (even after moving: the undo stack lives in
// sessionStorage).
"use strict";

(() => {
  const queue = document.getElementById("queue");
  const vector = Number(queue.dataset.vector);
  const at = Number(queue.dataset.at);
  const total = Number(queue.dataset.total);
  const note = document.getElementById("note");
  const errorBox = document.getElementById("queue-error");
  const stackKey = `steerscope-undo-${queue.dataset.run}`;

  const stack = () => JSON.parse(sessionStorage.getItem(stackKey) || "[]");
  const save = (s) => sessionStorage.setItem(stackKey, JSON.stringify(s.slice(-100)));

  async function post(path, body) {
    errorBox.textContent = "";
    const csrf = document.querySelector('meta[name="csrf-token"]')?.content;
    const headers = { "content-type": "application/json", ...(csrf ? { "X-CSRF-Token": csrf } : {}) };
    const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
    const data = await r.json();
    if (!r.ok) { errorBox.textContent = data.detail; return null; }
    return data;
  }

  async function toggle(button, on) {
    const label = Number(button.dataset.label);
    const result = await post("/api/labelings", { label_id: label, vector_id: vector, on });
    if (result === null) return null;
    button.classList.toggle("on", result.on);
    return result.on;
  }

  async function keyToggle(key, on) {
    const button = queue.querySelector(`.label-toggle[data-key="${key}"]`);
    if (!button) return;
    const was = button.classList.contains("on");
    if ((await toggle(button, on === undefined ? !was : on)) === null) return;
    const s = stack();
    s.push({ vector, label: Number(button.dataset.label), was, at });
    save(s);
  }

  function go(to) {
    if (to < 0 || to >= total) return;
    window.location = `/runs/${queue.dataset.run}/label?${queue.dataset.params}&at=${to}`;
  }

  async function submit() {
    if (note.value.trim() && (await post("/api/notes", { vector_id: vector, text: note.value })) === null) return;
    go(Math.min(at + 1, total - 1) === at ? at : at + 1);
  }

  async function undo() {
    const s = stack();
    const last = s.pop();
    if (!last) return;
    save(s);
    if (last.vector !== vector) { sessionStorage.setItem(`${stackKey}-redo`, JSON.stringify(last)); go(last.at); return; }
    const button = queue.querySelector(`.label-toggle[data-label="${last.label}"]`);
    await toggle(button, last.was);
  }

  // The scores' suggestion (unchanged, rephrase, gibberish) accepted with one key: its label goes on.
  async function accept() {
    const suggestion = document.getElementById("suggestion");
    if (!suggestion) return;
    const button = queue.querySelector(`.label-toggle[data-label="${suggestion.dataset.label}"]`);
    if (!button || button.classList.contains("on")) return;
    if (button.dataset.key) { await keyToggle(button.dataset.key, true); return; }
    await toggle(button, true);
  }

  // An undo that had to move to another vector finishes once that page is open.
  const pending = sessionStorage.getItem(`${stackKey}-redo`);
  if (pending) {
    sessionStorage.removeItem(`${stackKey}-redo`);
    const last = JSON.parse(pending);
    const button = queue.querySelector(`.label-toggle[data-label="${last.label}"]`);
    if (button && last.vector === vector) toggle(button, last.was);
  }

  // A label on one completion rather than on the vector.
  queue.querySelectorAll("select.generation-label").forEach((select) => select.addEventListener("change", async () => {
    if (!select.value) return;
    const done = await post("/api/labelings", { label_id: Number(select.value), generation_id: Number(select.dataset.generation), on: true });
    if (done) select.options[select.selectedIndex].textContent += " ✓";
    select.value = "";
  }));
  queue.querySelectorAll(".label-toggle").forEach((b) => b.addEventListener("click", () => keyToggle(b.dataset.key)));
  document.getElementById("next").addEventListener("click", () => go(at + 1));
  document.getElementById("prev").addEventListener("click", () => go(at - 1));
  document.addEventListener("keydown", (event) => {
    if (event.target === note) {
      if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); submit(); }
      if (event.key === "Escape") note.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (/^[1-9]$/.test(event.key)) keyToggle(event.key);
    else if (event.key === "n") { event.preventDefault(); note.hidden = false; note.focus(); }
    else if (event.key === "j" || event.key === "ArrowRight") go(at + 1);
    else if (event.key === "k" || event.key === "ArrowLeft") go(at - 1);
    else if (event.key === "Enter") { event.preventDefault(); submit(); }
    else if (event.key === "u") undo();
    else if (event.key === "a") accept();
  });
  queue.dataset.ready = "true"; // the keys work from here on (a test waits for it)
})();

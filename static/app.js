// steerscope's own page scripts: the plots. Everything else is htmx attributes in the templates.
"use strict";

const steerscope = (() => {
  const charts = new Map();
  const palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

  function chart(canvas, config) {
    if (charts.has(canvas)) charts.get(canvas).destroy();
    const made = new Chart(canvas, config);
    charts.set(canvas, made);
    canvas.dataset.ready = "1";
    return made;
  }

  // Per-vector objective curves, fed by the job's event stream (replayed from the start).
  function curves(canvas) {
    const job = canvas.dataset.job;
    if (!job) return;
    const made = chart(canvas, {
      type: "line",
      data: { datasets: [] },
      options: { animation: false, parsing: false, normalized: true,
                 scales: { x: { type: "linear", title: { display: true, text: "step" } },
                           y: { title: { display: true, text: "objective" } } },
                 plugins: { legend: { display: false } }, elements: { point: { radius: 0 } } },
    });
    const byVector = new Map();
    const source = new EventSource(`/api/jobs/${job}/events`);
    source.addEventListener("progress", (event) => {
      for (const [vector, step, value] of JSON.parse(event.data).points) {
        if (!byVector.has(vector)) {
          const set = { label: `vector ${vector}`, data: [], borderColor: palette[vector % palette.length],
                        borderWidth: 1 };
          byVector.set(vector, set);
          made.data.datasets.push(set);
        }
        byVector.get(vector).data.push({ x: step, y: value });
      }
      made.update("none");
    });
    source.addEventListener("finished", () => source.close());
    source.onerror = () => source.close();
  }

  // Norm, loss and KL against chain index.
  async function chainPlot(canvas) {
    const series = await (await fetch(canvas.dataset.series)).json();
    const line = (label, data, color, axis) => ({ label, data, borderColor: color, yAxisID: axis, tension: 0 });
    chart(canvas, {
      type: "line",
      data: { labels: series.index, datasets: [
        line("norm", series.norm, palette[0], "y"),
        line("loss", series.loss, palette[1], "y"),
        line("KL", series.kl, palette[2], "kl"),
      ] },
      options: { animation: false,
                 scales: { x: { title: { display: true, text: "chain index" } },
                           kl: { position: "right", title: { display: true, text: "next-token KL" } } } },
    });
  }

  // The run's vectors on their first two principal components; a click opens the vector.
  async function vectorMap(canvas) {
    const points = await (await fetch(canvas.dataset.points)).json();
    chart(canvas, {
      type: "scatter",
      data: { datasets: [{ data: points.map((p) => ({ x: p.x, y: p.y, id: p.id, label: p.label })),
                           pointBackgroundColor: points.map((p) => p.colour), pointRadius: 5 }] },
      options: { animation: false, plugins: { legend: { display: false },
                 tooltip: { callbacks: { label: (c) => `vector #${c.raw.id} ${c.raw.label}` } } },
                 onClick: (_event, hits, made) => {
                   if (hits.length) window.location = `/vectors/${made.data.datasets[0].data[hits[0].index].id}`;
                 } },
    });
  }

  function init(root) {
    root.querySelectorAll("canvas#curves:not([data-ready])").forEach(curves);
    root.querySelectorAll("canvas#chain-plot:not([data-ready])").forEach(chainPlot);
    root.querySelectorAll("canvas#vector-map:not([data-ready])").forEach(vectorMap);
  }

  document.addEventListener("DOMContentLoaded", () => init(document));
  document.addEventListener("htmx:sseMessage", (event) => {
    if (event.detail.type !== "finished") return;
    document.querySelectorAll("canvas#chain-plot, canvas#vector-map").forEach((c) =>
      c.id === "chain-plot" ? chainPlot(c) : vectorMap(c));
  });
  return { chainPlot, vectorMap, init };
})();
window.steerscope = steerscope;

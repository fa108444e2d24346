// steerscope's own page scripts: the plots, the links between them and the cards, the gallery's
// ticked vectors in the address bar, and a run page fetching itself again when its job ends.
// Everything else is htmx attributes in the templates.
"use strict";

// With an access token, every form that posts carries the page's CSRF token (htmx sends it as a header).
document.addEventListener("submit", (event) => {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content;
  const form = event.target;
  if (!csrf || form.method !== "post" || form.querySelector('input[name="csrf_token"]')) return;
  const field = Object.assign(document.createElement("input"), { type: "hidden", name: "csrf_token", value: csrf });
  form.append(field);
}, true);

// Busy state: a button whose request is out is disabled and says "working…" until the answer comes
// (htmx requests of a form or a button, plain form posts that load a new page, and chat.js's calls).
const busy = (() => {
  const WORKING = "working…";
  function on(button) {
    if (!button || button.dataset.idleLabel !== undefined) return;
    button.dataset.idleLabel = button.textContent;
    button.textContent = WORKING;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
  }
  function off(button) {
    if (!button || button.dataset.idleLabel === undefined) return;
    button.textContent = button.dataset.idleLabel;
    delete button.dataset.idleLabel;
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
  // The buttons a request speaks for: the one that made it, or the submit buttons of its form.
  function buttons(element, submitter) {
    if (!element || !element.matches) return [];
    if (element.matches("button, input[type=submit]")) return [element];
    if (element.tagName !== "FORM") return [];
    if (submitter) return [submitter];
    return [...element.querySelectorAll("button[type=submit], button:not([type]), input[type=submit]")];
  }
  const out = new WeakMap();  // element -> the buttons marked for its request under way
  document.addEventListener("htmx:beforeRequest", (event) => {
    const marked = buttons(event.detail.elt, event.detail.requestConfig?.triggeringEvent?.submitter);
    marked.forEach(on);
    out.set(event.detail.elt, marked);
  });
  document.addEventListener("htmx:afterRequest", (event) => {
    (out.get(event.detail.elt) || buttons(event.detail.elt)).forEach(off);
    out.delete(event.detail.elt);
  });
  // A plain form (no htmx, no script of its own) loads a new page: busy until it does.
  document.addEventListener("submit", (event) => {
    // After the event: the browser reads the form's fields first, and a disabled button sends none.
    if (!event.defaultPrevented) setTimeout(() => buttons(event.target, event.submitter).forEach(on), 0);
  });
  // Back to a page kept in the browser's cache: nothing of it is out any more.
  window.addEventListener("pageshow", () => document.querySelectorAll("[data-idle-label]").forEach(off));
  return { on, off, WORKING };
})();
window.steerscopeBusy = busy;

const steerscope = (() => {
  const palette = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
  const colour = (index) => palette[index % palette.length];
  const faded = "rgba(156, 163, 175, 0.35)";
  const LEGEND_MAX = 16; // more vectors than this: the legend would be a wall; hover still names them
  let highlighted = null; // the vector index shown in every view at once

  function chart(canvas, config) {
    const old = Chart.getChart(canvas);
    if (old) old.destroy();
    const made = new Chart(canvas, config);
    canvas.dataset.ready = "1";
    return made;
  }

  // Tick labels a person reads: as many decimals as the axis's span needs, and 0 for rounding noise.
  function readable(value, span) {
    const size = Math.abs(span) || Math.abs(value) || 1;
    if (Math.abs(value) < size * 1e-6) return "0";
    const decimals = Math.max(0, Math.min(6, 1 - Math.floor(Math.log10(size))));
    return Number(value).toFixed(decimals);
  }
  const ticks = { callback(value) { return readable(value, this.max - this.min); } };
  const axis = (text, extra) => ({ title: { display: true, text }, ticks, ...extra });

  function chartOf(id) {
    const canvas = document.getElementById(id);
    return canvas ? Chart.getChart(canvas) : undefined;
  }

  // Show vector `index` (or none) in the curves, the map, the chain plot and the cards together.
  function highlight(index) {
    if (highlighted === index) return;
    highlighted = index;
    document.querySelectorAll("article.card.linked").forEach((c) => c.classList.remove("linked"));
    if (index !== null) {
      document.querySelectorAll(`article.card[data-index="${index}"]`).forEach((c) => c.classList.add("linked"));
    }
    const curves = chartOf("curves");
    if (curves) {
      for (const set of curves.data.datasets) {
        const on = index === null || set.vectorIndex === index;
        set.borderColor = on ? set.baseColour : faded;
        set.borderWidth = index !== null && on ? 3 : 1;
      }
      curves.update("none");
    }
    for (const id of ["vector-map", "chain-plot"]) {
      const made = chartOf(id);
      if (!made) continue;
      const active = [];
      made.data.datasets.forEach((set, datasetIndex) => {
        const at = set.vectorIndexes ? set.vectorIndexes.indexOf(index) : -1;
        if (at >= 0) active.push({ datasetIndex, index: at });
      });
      made.setActiveElements(active);
      made.tooltip.setActiveElements(active, { x: 0, y: 0 });
      made.update("none");
    }
    document.body.dataset.highlight = index === null ? "" : String(index);
  }

  function hovered(made, elements) {
    if (!elements.length) return highlight(null);
    const set = made.data.datasets[elements[0].datasetIndex];
    highlight(set.vectorIndex ?? set.vectorIndexes[elements[0].index]);
  }

  function lineSet(index, label) {
    return { label, vectorIndex: index, baseColour: colour(index), borderColor: colour(index), borderWidth: 1, data: [] };
  }

  function curvesChart(canvas) {
    return chart(canvas, {
      type: "line",
      data: { datasets: [] },
      options: {
        animation: false, parsing: false, normalized: true,
        interaction: { mode: "nearest", intersect: false },
        onHover: (_event, elements, made) => hovered(made, elements),
        scales: { x: axis("optimizer step", { type: "linear" }), y: axis("objective") },
        plugins: {
          legend: { position: "right", onHover: (_e, item, legend) => highlight(legend.chart.data.datasets[item.datasetIndex].vectorIndex),
                    onLeave: () => highlight(null) },
          tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${readable(c.parsed.y, c.parsed.y)} at step ${c.parsed.x}` } },
        },
        elements: { point: { radius: 0 } },
      },
    });
  }

  function legendFits(made) {
    made.options.plugins.legend.display = made.data.datasets.length <= LEGEND_MAX;
  }

  // Per-vector objective curves: live from the job's events while it trains, else from the stored vectors.
  async function curves(canvas) {
    const made = curvesChart(canvas);
    if (canvas.dataset.curves) {
      const rows = await (await fetch(canvas.dataset.curves)).json();
      for (const row of rows) {
        const set = lineSet(row.index, `#${row.id} (index ${row.index})`);
        set.data = row.curve.map((y, x) => ({ x, y }));
        made.data.datasets.push(set);
      }
      legendFits(made);
      made.update("none");
      return;
    }
    if (!canvas.dataset.job) return;
    const byVector = new Map();
    const source = new EventSource(`/api/jobs/${canvas.dataset.job}/events`);
    source.addEventListener("progress", (event) => {
      for (const [vector, step, value] of JSON.parse(event.data).points || []) {
        if (!byVector.has(vector)) {
          const set = lineSet(vector, `index ${vector}`);
          byVector.set(vector, set);
          made.data.datasets.push(set);
        }
        byVector.get(vector).data.push({ x: step, y: value });
      }
      legendFits(made);
      made.update("none");
    });
    source.addEventListener("finished", () => source.close());
    source.onerror = () => source.close();
  }

  // Norm, loss and KL against chain index.
  async function chainPlot(canvas) {
    const series = await (await fetch(canvas.dataset.series)).json();
    const line = (label, data, color, yAxisID) => ({ label, data, borderColor: color, backgroundColor: color, yAxisID,
                                                     tension: 0, vectorIndexes: series.index });
    chart(canvas, {
      type: "line",
      data: { labels: series.index, datasets: [
        line("norm", series.norm, palette[0], "y"),
        line("loss", series.loss, palette[1], "y"),
        line("next-token KL", series.kl, palette[2], "kl"),
      ] },
      options: {
        animation: false,
        interaction: { mode: "index", intersect: false },
        onHover: (_event, elements, made) => hovered(made, elements),
        scales: { x: { title: { display: true, text: "chain index" } },
                  y: axis("norm and loss"), kl: axis("next-token KL", { position: "right" }) },
        plugins: { tooltip: { callbacks: { title: (items) => `chain index ${items[0].label}: vector #${series.id[items[0].dataIndex]}` } } },
      },
    });
  }

  // The run's vectors on their first two principal components; a click opens the vector.
  async function vectorMap(canvas) {
    const { points, axes } = await (await fetch(canvas.dataset.points)).json();
    const data = points.map((p) => ({ x: p.x, y: p.y, id: p.id, index: p.index, label: p.label, behaviour: p.behaviour }));
    chart(canvas, {
      type: "scatter",
      data: { datasets: [{
        label: "vectors", data, vectorIndexes: points.map((p) => p.index),
        // Coloured by behaviour once the run is scored; by vector before that.
        pointBackgroundColor: points.map((p) => p.behaviour_colour || colour(p.index)),
        pointBorderColor: points.map((p) => p.colour || colour(p.index)),
        pointBorderWidth: points.map((p) => (p.colour ? 3 : 1)),
        pointRadius: 5, pointHoverRadius: 9,
      }] },
      options: {
        animation: false,
        onHover: (_event, elements, made) => hovered(made, elements),
        scales: { x: axis(axes[0] || "principal component 1"), y: axis(axes[1] || "principal component 2") },
        plugins: { legend: { display: false },
                   tooltip: { callbacks: { label: (c) => `vector #${c.raw.id} (index ${c.raw.index}) ${c.raw.behaviour ? `· ${c.raw.behaviour} ` : ""}${c.raw.label}` } } },
        onClick: (_event, hits, made) => {
          if (hits.length) window.location = `/vectors/${made.data.datasets[0].data[hits[0].index].id}`;
        },
      },
    });
  }

  // Distinct behaviours found against vectors tried, learned vs the random twin.
  async function discovery(canvas) {
    const curve = await (await fetch(canvas.dataset.series)).json();
    const points = (ys) => ys.map((y, i) => ({ x: i + 1, y }));
    chart(canvas, {
      type: "line",
      data: { datasets: [
        { label: "learned vectors", data: points(curve.learned), borderColor: palette[0], stepped: true },
        { label: "random vectors, same R", data: points(curve.random), borderColor: palette[1], stepped: true },
      ] },
      options: { animation: false, parsing: false, elements: { point: { radius: 0 } },
                 scales: { x: axis("vectors tried", { type: "linear" }),
                           y: axis("distinct behaviours", { beginAtZero: true }) } },
    });
  }

  // Vertical lines at the sweep's markers, each named at the top of the plot.
  function markerLines(markers) {
    return {
      id: "markers",
      afterDatasetsDraw(made) {
        const { ctx, chartArea, scales } = made;
        ctx.save();
        markers.forEach((m, i) => {
          const x = scales.x.getPixelForValue(m.scale);
          ctx.strokeStyle = m.colour;
          ctx.fillStyle = m.colour;
          ctx.setLineDash([6, 4]);
          ctx.beginPath();
          ctx.moveTo(x, chartArea.top);
          ctx.lineTo(x, chartArea.bottom);
          ctx.stroke();
          // One row each: the two may sit at the same scale.
          ctx.fillText(`${m.label} × ${readable(m.scale, m.scale)}`, x + 4, chartArea.top + 12 + 14 * i);
        });
        ctx.restore();
      },
    };
  }

  // A scale sweep: effect, fluency and next-token KL against scale, with where most completions
  // first change and where they break.
  async function scaleSweep(canvas) {
    const sweep = await (await fetch(canvas.dataset.series)).json();
    const at = (key) => sweep.points.map((p) => ({ x: p.scale, y: p[key] }));
    const line = (label, key, colour, yAxisID) => ({ label, data: at(key), borderColor: colour, backgroundColor: colour,
                                                     yAxisID, tension: 0 });
    const markers = [["first change", sweep.first_change, palette[2]], ["breaks", sweep.breaks, palette[1]]]
      .filter(([, scale]) => scale !== null).map(([label, scale, colour]) => ({ label, scale, colour }));
    canvas.dataset.markers = markers.map((m) => m.label).join(",");
    chart(canvas, {
      type: "line",
      data: { datasets: [
        line("effect (distance from unsteered)", "effect", palette[0], "effect"),
        line("fluency (log-prob per token)", "fluency", palette[3], "fluency"),
        line("next-token KL", "kl", palette[4], "kl"),
      ] },
      options: {
        animation: false, parsing: false,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        scales: {
          x: axis("scale (× the vector)", { type: "linear" }),
          effect: axis("effect", { position: "left", min: 0, max: 1 }),
          fluency: axis("fluency", { position: "right", grid: { drawOnChartArea: false } }),
          kl: axis("next-token KL", { position: "right", beginAtZero: true, grid: { drawOnChartArea: false } }),
        },
        plugins: { tooltip: { callbacks: {
          title: (items) => `× ${readable(items[0].parsed.x, items[0].parsed.x)} (norm ${readable(Math.abs(items[0].parsed.x) * sweep.norm, sweep.norm)})`,
        } } },
      },
      plugins: [markerLines(markers)],
    });
  }

  // A search's detector score per generation: best so far, best and mean of each generation.
  async function searchPlot(canvas) {
    const found = await (await fetch(canvas.dataset.series)).json();
    const at = (key) => found.generations.map((g) => ({ x: g.generation, y: g[key] }));
    const line = (label, key, colour, extra = {}) => ({ label, data: at(key), borderColor: colour, backgroundColor: colour,
                                                        tension: 0, ...extra });
    chart(canvas, {
      type: "line",
      data: { datasets: [
        line("best so far", "best", palette[0], { stepped: true }),
        line("best of the generation", "max", palette[2]),
        line("mean of the generation", "mean", palette[3]),
      ] },
      options: { animation: false, parsing: false,
                 scales: { x: axis("generation (0: the start)", { type: "linear", ticks: { stepSize: 1 } }),
                           y: axis("detector score", { beginAtZero: true }) } },
    });
  }

  // An R-path: how the direction turns as R grows (cosines), beside the objective.
  async function rpathPlot(canvas) {
    const path = await (await fetch(canvas.dataset.series)).json();
    const at = (key) => path.points.map((p) => ({ x: p.multiple, y: p[key] }));
    const line = (label, key, colour, yAxisID) => ({ label, data: at(key), borderColor: colour, backgroundColor: colour,
                                                     yAxisID, tension: 0 });
    chart(canvas, {
      type: "line",
      data: { datasets: [
        line("cosine with the vector", "cos_parent", palette[0], "cos"),
        line("cosine with the next smaller R", "cos_previous", palette[2], "cos"),
        line("objective", "objective", palette[3], "objective"),
      ] },
      options: { animation: false, parsing: false,
                 scales: { x: axis("× R", { type: "linear" }), cos: axis("cosine", { max: 1 }),
                           objective: axis("objective", { position: "right", grid: { drawOnChartArea: false } }) } },
    });
  }

  function init(root) {
    const scope = root.querySelectorAll ? root : document;
    const own = (selector) => [...(root.matches && root.matches(selector) ? [root] : []), ...scope.querySelectorAll(selector)];
    own("canvas#curves:not([data-ready])").forEach(curves);
    own("canvas#chain-plot:not([data-ready])").forEach(chainPlot);
    own("canvas#vector-map:not([data-ready])").forEach(vectorMap);
    own("canvas#discovery:not([data-ready])").forEach(discovery);
    own("canvas#scale-sweep-plot:not([data-ready])").forEach(scaleSweep);
    own("canvas#search-plot:not([data-ready])").forEach(searchPlot);
    own("canvas#rpath-plot:not([data-ready])").forEach(rpathPlot);
  }

  // The gallery's ticked vectors live in the address bar too, so a reload or a shared link keeps them.
  function syncSelection(form) {
    const picks = new FormData(form).getAll("pick");
    const url = new URL(window.location.href);
    url.searchParams.delete("pick");
    picks.forEach((p) => url.searchParams.append("pick", p));
    history.replaceState(history.state, "", url);
    const link = form.querySelector("#compare-selected");
    link.href = `/compare?ids=${[...picks].sort((a, b) => a - b).join(",")}`;
    if (picks.length < 2) link.setAttribute("aria-disabled", "true");
    else link.removeAttribute("aria-disabled");
    form.querySelector("#picked").textContent =
      `${picks.length} ticked${picks.length < 2 ? ": tick 2 to 8 vectors to compare them" : ""}`;
  }

  document.addEventListener("change", (event) => {
    if (event.target.name === "pick" && event.target.form) syncSelection(event.target.form);
  });

  // A tick outlives any new copy of the gallery (a new view, or the run page's fresh copy when its
  // job ends): each box is kept across swaps (hx-preserve). The count, the compare link and the
  // address in that copy were drawn from the request as it was sent, so they are read again, and
  // only then: a live page swaps its progress many times a second, and browsers limit how often
  // a page may rewrite its address.
  document.addEventListener("htmx:afterSwap", (event) => {
    const form = document.getElementById("gallery");
    if (form && event.target.contains && event.target.contains(form)) syncSelection(form);
  });
  document.addEventListener("click", (event) => {
    if (event.target.closest && event.target.closest("a[aria-disabled=true]")) event.preventDefault();
  });
  document.addEventListener("mouseover", (event) => {
    const card = event.target.closest ? event.target.closest("article.card[data-index]") : null;
    highlight(card ? Number(card.dataset.index) : null);
  });

  // The job ended: fetch this page again at its current address (the gallery's view included).
  // The fresh copy is finished, so it has no stream; the old one closes its own. A fetch that
  // fails (a busy or restarting server) is tried again: the old copy, its stream closed, would
  // otherwise stay as it was and follow nothing.
  function fetchRunAgain(old, wait) {
    const again = () => {
      if (old.isConnected) window.setTimeout(() => fetchRunAgain(old, Math.min(wait * 2, 16000)), wait);
    };
    htmx.ajax("GET", window.location.pathname + window.location.search,
              { target: "#run-body", select: "#run-body", swap: "outerHTML" }).then(again, again);
  }
  document.addEventListener("htmx:sseMessage", (event) => {
    if (event.detail.type !== "finished" || event.target.id !== "run-body") return;
    fetchRunAgain(event.target, 1000);
  });
  htmx.onLoad(init);
  return { chainPlot, vectorMap, discovery, scaleSweep, highlight, init, readable };
})();
window.steerscope = steerscope;

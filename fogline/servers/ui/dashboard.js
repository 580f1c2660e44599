/* The Fogline dashboard: polls GET /v1/dashboard once a second and renders the topology, traffic charts
 * (uPlot), routes, escalation, events and rollouts. Read-only.
 *
 * Every string from the server is inserted as text (textContent, dataset, title), never as HTML. The page
 * keeps the last window_s (15 min) of points and events, capped per series and in all, so it never grows
 * without bound. No inline script or style: the server sends Content-Security-Policy default-src 'self'.
 */
"use strict";

(function dashboard() {
  const POLL_INTERVAL_MS = 1000;
  const POLL_TIMEOUT_MS = 2500;
  const STALE_AFTER_MS = 3000;
  const INDICATOR_CHECK_MS = 500;
  const DEFAULT_WINDOW_S = 900;
  const MAX_POINTS_PER_SERIES = 1200; // 15 min at a point a second, with room
  const MAX_EVENTS = 200;
  const MAX_MODELS_SHOWN = 4;
  const CHART_HEIGHT_PX = 96;
  const MIN_SPAN_S = 60; // a young window still spans a minute

  const ROUTE_ORDER = ["placement", "overflow", "failover", "cascade-easy", "cascade-hard", "degraded", "hint"];
  const KIND_ORDER = new Map([["cloud", 0], ["worker", 1], ["region", 2], ["edge", 3], ["device", 4]]);
  const TIER_ORDER = new Map([["cloud", 0], ["worker", 1], ["edge", 2], ["device", 3]]);
  const HEALTH = new Set(["healthy", "unhealthy", "down", "unknown"]);
  const CIRCUIT_LABEL = new Map([["closed", ""], ["half_open", "half-open"], ["open", "open"], ["ejected", "ejected"]]);
  const FIELDS = ["rps", "error_rate", "p50_ms", "p99_ms"];

  const state = {
    since: null, // the previous answer's now: the next poll asks for what came after it
    now: null,
    windowS: DEFAULT_WINDOW_S,
    lastOkMs: null,
    lastFailed: false,
    series: new Map(), // "tier\u0000model" -> {tier, model, t, rps, error_rate, p50_ms, p99_ms}
    events: [], // newest first
    eventKeys: new Set(),
    charts: new Map(), // series key -> {card, summary, plots}
    chartOrder: "",
    topologyKey: "",
  };

  /* ---- small helpers ---- */

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function byId(id) {
    return document.getElementById(id);
  }

  function isObj(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  function arr(value) {
    return Array.isArray(value) ? value : [];
  }

  function obj(value) {
    return isObj(value) ? value : {};
  }

  function str(value) {
    return value === null || value === undefined ? "" : String(value);
  }

  function num(value) {
    return typeof value === "number" && Number.isFinite(value) ? value : null;
  }

  function fixed(value, digits) {
    return value === null ? "\u2013" : value.toFixed(digits);
  }

  function pad2(n) {
    return String(n).padStart(2, "0");
  }

  function clock(t) {
    const d = new Date(t * 1000);
    return pad2(d.getHours()) + ":" + pad2(d.getMinutes()) + ":" + pad2(d.getSeconds());
  }

  function cell(text, className) {
    return el("td", className || "", text);
  }

  function emptyRow(columns, text) {
    const td = cell(text, "empty");
    td.colSpan = columns;
    const tr = el("tr");
    tr.append(td);
    return tr;
  }

  /* ---- polling ---- */

  function dashboardUrl() {
    // NOTE: a path without scheme or host, so the page works over http and https alike
    return state.since === null ? "/v1/dashboard" : "/v1/dashboard?since=" + encodeURIComponent(state.since);
  }

  async function fetchDashboard() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), POLL_TIMEOUT_MS);
    try {
      const reply = await fetch(dashboardUrl(), {
        cache: "no-store", headers: { Accept: "application/json" }, signal: controller.signal,
      });
      if (!reply.ok) throw new Error("HTTP " + reply.status);
      return await reply.json();
    } finally {
      clearTimeout(timer);
    }
  }

  async function poll() {
    try {
      apply(await fetchDashboard());
      state.lastOkMs = performance.now();
      state.lastFailed = false;
    } catch (err) {
      state.lastFailed = true;
    }
    renderIndicator();
    setTimeout(poll, POLL_INTERVAL_MS);
  }

  function apply(answer) {
    if (!isObj(answer)) throw new Error("not a dashboard document");
    const now = num(answer.now);
    state.windowS = num(answer.window_s) || state.windowS;
    if (now !== null) {
      state.now = now;
      state.since = now;
    }
    renderHeader(answer);
    renderTopology(arr(answer.nodes));
    mergeSeries(arr(answer.series));
    renderCharts();
    renderRoutes(obj(answer.routes));
    renderEscalation(arr(answer.escalation));
    mergeEvents(arr(answer.events));
    renderRollouts(arr(answer.rollouts));
  }

  function cutoff() {
    return state.now === null ? -Infinity : state.now - state.windowS;
  }

  /* ---- header ---- */

  function renderHeader(answer) {
    const id = str(answer.id);
    byId("scope").textContent = answer.scope === "edge" ? "edge of region " + str(answer.region) : "cloud";
    byId("master-id").textContent = id;
    document.title = "Fogline \u00b7 " + id;
    if (state.now !== null) byId("updated").textContent = "updated " + clock(state.now);
  }

  function renderIndicator() {
    const fresh = state.lastOkMs !== null && performance.now() - state.lastOkMs <= STALE_AFTER_MS;
    const live = fresh && !state.lastFailed;
    const indicator = byId("live");
    indicator.dataset.state = live ? "live" : "stale";
    indicator.textContent = live ? "live" : "stale";
  }

  /* ---- topology ---- */

  function normaliseNode(node) {
    const load = obj(node.load);
    const circuit = CIRCUIT_LABEL.has(node.circuit) ? node.circuit : "none";
    return {
      id: str(node.id), kind: str(node.kind) || "node", parent: node.parent == null ? null : str(node.parent),
      health: HEALTH.has(node.health) ? node.health : "unknown", circuit,
      inFlight: num(load.in_flight), queue: num(load.queue_depth),
      versions: normaliseVersions(node.versions), address: str(node.address),
    };
  }

  function normaliseVersions(versions) {
    return Object.entries(obj(versions)).map(([model, list]) => [model, arr(list).map(str)]);
  }

  function renderTopology(nodes) {
    const clean = nodes.filter(isObj).map(normaliseNode);
    const key = JSON.stringify(clean);
    if (key === state.topologyKey) return;
    state.topologyKey = key;
    byId("tree").replaceChildren(clean.length ? buildTree(clean) : el("p", "empty", "No nodes yet."));
  }

  function sortNodes(nodes) {
    const rank = (n) => (KIND_ORDER.has(n.kind) ? KIND_ORDER.get(n.kind) : KIND_ORDER.size);
    return nodes.slice().sort((a, b) => rank(a) - rank(b) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  function indexTree(nodes) {
    const known = new Map();
    for (const node of nodes) if (!known.has(node.id)) known.set(node.id, node);
    const children = new Map();
    const roots = [];
    for (const node of known.values()) {
      if (node.parent === null || node.parent === node.id || !known.has(node.parent)) {
        roots.push(node);
      } else {
        if (!children.has(node.parent)) children.set(node.parent, []);
        children.get(node.parent).push(node);
      }
    }
    return { known, children, roots };
  }

  function buildTree(nodes) {
    const { known, children, roots } = indexTree(nodes);
    const placed = new Set();
    const list = el("ul", "level");
    for (const root of sortNodes(roots)) list.append(branch(root, children, placed));
    // NOTE: nodes whose parents form a loop reach no root: show them at the top rather than not at all
    for (const node of sortNodes([...known.values()])) {
      if (!placed.has(node.id)) list.append(branch(node, children, placed));
    }
    return list;
  }

  function branch(node, children, placed) {
    placed.add(node.id);
    const item = el("li", "branch");
    item.dataset.kind = node.kind;
    item.append(nodeBox(node));
    const kids = sortNodes(children.get(node.id) || []).filter((kid) => !placed.has(kid.id));
    if (kids.length) {
      const list = el("ul", "children");
      for (const kid of kids) list.append(branch(kid, children, placed));
      item.append(list);
    }
    return item;
  }

  function nodeBox(node) {
    const box = el("div", "node");
    box.dataset.nodeId = node.id;
    box.dataset.kind = node.kind;
    box.dataset.health = node.health;
    box.dataset.circuit = node.circuit;
    if (node.address) box.title = node.address;
    box.append(nodeHead(node), nodeState(node));
    if (node.kind !== "region") box.append(el("div", "node-load", loadText(node)));
    box.append(...versionLines(node.versions));
    return box;
  }

  function nodeHead(node) {
    const head = el("div", "node-head");
    head.append(el("span", "node-id", node.id));
    const label = CIRCUIT_LABEL.get(node.circuit);
    if (label) {
      const badge = el("span", "badge", label);
      badge.dataset.circuit = node.circuit;
      badge.title = "circuit " + label;
      head.append(badge);
    }
    return head;
  }

  function nodeState(node) {
    const line = el("div", "node-state");
    line.append(el("span", "kind", node.kind), " \u00b7 ", el("span", "health", node.health));
    return line;
  }

  function loadText(node) {
    return "in flight " + str(node.inFlight ?? "\u2013") + " \u00b7 queue " + str(node.queue ?? "\u2013");
  }

  function versionLines(versions) {
    const lines = versions.slice(0, MAX_MODELS_SHOWN).map(([model, list]) =>
      el("div", "node-versions", model + (list.length ? " v" + list.join(", v") : "")));
    if (versions.length > MAX_MODELS_SHOWN) {
      lines.push(el("div", "node-versions", "+" + (versions.length - MAX_MODELS_SHOWN) + " more models"));
    }
    return lines;
  }

  /* ---- series ---- */

  function seriesKey(tier, model) {
    return tier + "\u0000" + model;
  }

  function mergeSeries(list) {
    for (const incoming of list.filter(isObj)) {
      const tier = str(incoming.tier);
      const model = str(incoming.model);
      const key = seriesKey(tier, model);
      if (!state.series.has(key)) {
        state.series.set(key, { tier, model, t: [], rps: [], error_rate: [], p50_ms: [], p99_ms: [] });
      }
      appendPoints(state.series.get(key), incoming);
    }
    pruneSeries();
  }

  function appendPoints(kept, incoming) {
    const times = arr(incoming.t);
    const columns = FIELDS.map((field) => arr(incoming[field]));
    for (let i = 0; i < times.length; i++) {
      const t = num(times[i]);
      const last = kept.t.length ? kept.t[kept.t.length - 1] : -Infinity;
      if (t === null || t < last) continue;
      if (t === last) dropLast(kept); // the same second again: the newer answer wins
      kept.t.push(t);
      FIELDS.forEach((field, j) => kept[field].push(num(columns[j][i])));
    }
  }

  function dropLast(kept) {
    kept.t.pop();
    for (const field of FIELDS) kept[field].pop();
  }

  function pruneSeries() {
    const oldest = cutoff();
    for (const [key, kept] of state.series) {
      let drop = 0;
      while (drop < kept.t.length && kept.t[drop] < oldest) drop++;
      drop = Math.max(drop, kept.t.length - MAX_POINTS_PER_SERIES);
      if (drop > 0) {
        kept.t.splice(0, drop);
        for (const field of FIELDS) kept[field].splice(0, drop);
      }
      if (!kept.t.length) state.series.delete(key);
    }
  }

  /* ---- charts ---- */

  function sortedSeriesKeys() {
    const rank = (s) => (TIER_ORDER.has(s.tier) ? TIER_ORDER.get(s.tier) : TIER_ORDER.size);
    return [...state.series.entries()]
      .sort(([, a], [, b]) => rank(a) - rank(b) || (a.model < b.model ? -1 : a.model > b.model ? 1 : 0))
      .map(([key]) => key);
  }

  function renderCharts() {
    const container = byId("charts");
    if (typeof window.uPlot !== "function") {
      container.replaceChildren(el("p", "empty", "Charts unavailable: the chart library did not load."));
      return;
    }
    removeStaleCharts();
    const keys = sortedSeriesKeys();
    placeCards(container, keys);
    for (const key of keys) updateChart(state.charts.get(key), state.series.get(key));
  }

  function removeStaleCharts() {
    for (const [key, chart] of state.charts) {
      if (state.series.has(key)) continue;
      resizer.unobserve(chart.card);
      chart.plots.forEach((plot) => plot.destroy());
      chart.card.remove();
      state.charts.delete(key);
    }
  }

  function placeCards(container, keys) {
    const order = keys.join("\u0001");
    if (order === state.chartOrder) return;
    state.chartOrder = order;
    if (!keys.length) {
      container.replaceChildren(el("p", "empty", "No traffic yet."));
      return;
    }
    container.querySelectorAll(".empty").forEach((node) => node.remove());
    for (const key of keys) {
      if (!state.charts.has(key)) state.charts.set(key, createChart(container, state.series.get(key)));
      container.append(state.charts.get(key).card);
    }
  }

  function createChart(container, kept) {
    const card = el("article", "chart-card");
    card.dataset.tier = kept.tier;
    card.dataset.model = kept.model;
    const title = el("h3");
    title.append(el("span", "tier", kept.tier), " \u00b7 ", el("span", "model", kept.model));
    const summary = el("div", "chart-summary");
    card.append(title, summary);
    container.append(card);
    const width = chartWidth(card);
    const plots = CHARTS.map((spec) => {
      card.append(el("div", "chart-title", spec.title));
      const target = el("div", "chart");
      target.dataset.chart = spec.name;
      card.append(target);
      return new window.uPlot(plotOptions(spec, width), emptyData(spec), target);
    });
    const chart = { card, summary, plots, width };
    resizer.observe(card);
    return chart;
  }

  function chartWidth(card) {
    return Math.max(160, card.clientWidth - 18);
  }

  function emptyData(spec) {
    return [[], ...spec.lines.map(() => [])];
  }

  function upperRange(floor) {
    return (u, min, max) => [0, Math.max(floor, (max || 0) * 1.1)];
  }

  const CHARTS = [
    { name: "rps", title: "requests / s", range: upperRange(1),
      lines: [{ label: "rps", stroke: "#0969da", fill: "rgba(9,105,218,0.10)", value: (s) => s.rps }] },
    { name: "errors", title: "errors %", range: upperRange(5),
      lines: [{ label: "errors %", stroke: "#cf222e", fill: "rgba(207,34,46,0.10)",
                value: (s) => s.error_rate.map((v) => (v === null ? null : v * 100)) }] },
    { name: "latency", title: "latency ms: p50 (green), p99 (amber)", range: upperRange(1),
      lines: [{ label: "p50 ms", stroke: "#1a7f37", value: (s) => s.p50_ms },
              { label: "p99 ms", stroke: "#bf8700", value: (s) => s.p99_ms }] },
  ];

  function plotOptions(spec, width) {
    return {
      width, height: CHART_HEIGHT_PX,
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: xRange }, y: { range: spec.range } },
      axes: [{ size: 24, font: "10px system-ui, sans-serif", gap: 2, values: timeTicks },
             { size: 40, font: "10px system-ui, sans-serif", gap: 2, space: 20 }],
      series: [{}, ...spec.lines.map((line) => ({
        label: line.label, stroke: line.stroke, fill: line.fill, width: 1.5, points: { show: false },
      }))],
    };
  }

  function earliestPoint() {
    let earliest = Infinity;
    for (const kept of state.series.values()) if (kept.t.length) earliest = Math.min(earliest, kept.t[0]);
    return earliest;
  }

  function xRange(u, min, max) {
    // NOTE: the same span on every chart: from the oldest point kept (at least MIN_SPAN_S ago) to now
    if (state.now === null) return [min, max];
    const from = Math.max(state.now - state.windowS, Math.min(earliestPoint(), state.now - MIN_SPAN_S));
    return [from, state.now];
  }

  function timeTicks(u, splits) {
    const seconds = splits.length > 1 && splits[1] - splits[0] < 60;
    return splits.map((t) => (seconds ? clock(t) : clock(t).slice(0, 5)));
  }

  function updateChart(chart, kept) {
    CHARTS.forEach((spec, i) => {
      chart.plots[i].setData([kept.t.slice(), ...spec.lines.map((line) => line.value(kept).slice())]);
    });
    chart.summary.textContent = summaryText(kept);
  }

  function lastOf(list) {
    return list.length ? list[list.length - 1] : null;
  }

  function summaryText(kept) {
    const errors = lastOf(kept.error_rate);
    return fixed(lastOf(kept.rps), 1) + " rps \u00b7 " + fixed(errors === null ? null : errors * 100, 1) +
      " % err \u00b7 p50 " + fixed(lastOf(kept.p50_ms), 1) + " \u00b7 p99 " + fixed(lastOf(kept.p99_ms), 1) + " ms";
  }

  function resizeCharts() {
    for (const chart of state.charts.values()) {
      const width = chartWidth(chart.card);
      if (width === chart.width) continue; // NOTE: a card's height changes too; only its width matters
      chart.width = width;
      chart.plots.forEach((plot) => plot.setSize({ width, height: CHART_HEIGHT_PX }));
    }
  }

  let resizePending = false;
  const resizer = new ResizeObserver(() => {
    if (resizePending) return;
    resizePending = true;
    requestAnimationFrame(() => { resizePending = false; resizeCharts(); });
  });

  /* ---- routes and escalation ---- */

  function routeCounts(routes) {
    const extra = Object.keys(routes).filter((name) => !ROUTE_ORDER.includes(name)).sort();
    return [...ROUTE_ORDER, ...extra]
      .map((name) => [name, num(routes[name])])
      .filter(([name, count]) => count !== null || ROUTE_ORDER.includes(name))
      .map(([name, count]) => [name, count || 0]);
  }

  function renderRoutes(routes) {
    const counts = routeCounts(routes);
    const total = counts.reduce((sum, [, count]) => sum + count, 0);
    byId("routes").tBodies[0].replaceChildren(...counts.map(([name, count]) => routeRow(name, count, total)));
  }

  function routeRow(name, count, total) {
    const share = total > 0 ? count / total : 0;
    const row = el("tr");
    row.dataset.route = name;
    const bar = el("div", "share-bar");
    const fill = el("div", "share-fill");
    fill.style.width = (share * 100).toFixed(1) + "%"; // NOTE: CSSOM, which CSP style-src 'self' allows
    bar.append(fill);
    const barCell = el("td");
    barCell.append(bar);
    row.append(cell(name), cell(String(count), "num"), cell((share * 100).toFixed(1) + " %", "num"), barCell);
    return row;
  }

  function renderEscalation(list) {
    const rows = list.filter(isObj).map((entry) => {
      const row = el("tr");
      row.dataset.model = str(entry.model);
      const rate = num(entry.rate);
      row.append(cell(str(entry.model)), cell(rate === null ? "\u2013" : (rate * 100).toFixed(1) + " %", "num"),
                 cell(str(num(entry.requests) ?? "\u2013"), "num"));
      return row;
    });
    byId("escalation").tBodies[0].replaceChildren(...(rows.length ? rows : [emptyRow(3, "no cascades")]));
  }

  /* ---- events ---- */

  function eventKey(event) {
    return str(event.seq) + "@" + str(event.t);
  }

  function mergeEvents(list) {
    let changed = false;
    for (const event of list.filter(isObj)) {
      const key = eventKey(event);
      if (state.eventKeys.has(key) || num(event.t) === null) continue;
      state.eventKeys.add(key);
      state.events.push(event);
      changed = true;
    }
    if (pruneEvents() || changed) renderEvents();
  }

  function newestFirst(a, b) {
    return b.t - a.t || (num(b.seq) ?? 0) - (num(a.seq) ?? 0);
  }

  function pruneEvents() {
    const before = state.events.length;
    const oldest = cutoff();
    state.events = state.events.filter((event) => event.t >= oldest).sort(newestFirst).slice(0, MAX_EVENTS);
    state.eventKeys = new Set(state.events.map(eventKey));
    return state.events.length !== before;
  }

  function renderEvents() {
    const items = state.events.map(eventItem);
    byId("events").replaceChildren(...(items.length ? items : [el("li", "empty", "No events.")]));
  }

  function eventItem(event) {
    const item = el("li");
    item.dataset.kind = str(event.kind);
    if (event.node != null) item.dataset.node = str(event.node);
    item.title = new Date(event.t * 1000).toISOString();
    item.append(el("span", "when", clock(event.t)), el("span", "kind", str(event.kind)), el("span", "text", str(event.text)));
    return item;
  }

  /* ---- rollouts ---- */

  function progressText(rollout) {
    const percent = num(rollout.percent);
    const step = num(rollout.step);
    const steps = arr(rollout.steps);
    let text = percent === null ? "" : percent + " %";
    if (step !== null) {
      // NOTE: step indexes steps (steps[step] is the current percent); people count from 1
      const shown = steps[step] === percent ? step + 1 : step;
      text += " \u00b7 step " + shown + (steps.length ? " of " + steps.length : "");
    }
    return rollout.reason ? text + " \u00b7 " + str(rollout.reason) : text;
  }

  function renderRollouts(list) {
    const rows = list.filter(isObj).map((rollout) => {
      const row = el("tr");
      row.dataset.model = str(rollout.model);
      const stateCell = cell(str(rollout.state));
      stateCell.dataset.state = str(rollout.state);
      row.append(cell(str(rollout.model)), cell(str(rollout.version)), stateCell, cell(progressText(rollout)));
      return row;
    });
    byId("rollouts").tBodies[0].replaceChildren(...(rows.length ? rows : [emptyRow(4, "no rollouts")]));
  }

  /* ---- start ---- */

  function start() {
    renderEvents();
    renderRollouts([]);
    renderEscalation([]);
    renderRoutes({});
    setInterval(renderIndicator, INDICATOR_CHECK_MS);
    poll();
  }

  start();
})();

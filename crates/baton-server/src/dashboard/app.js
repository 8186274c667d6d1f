// Baton's dashboard: one SSE stream per tab, views that change with its events, and
// the HTTP API for everything else. Nothing here polls.

// The job list's orders (newest first) and the column each shows.
const SORTS = [["created", "Created"], ["started", "Started"], ["finished", "Finished"]];
const STATES = ["scheduled", "awaiting", "queued", "running", "paused", "stopping",
  "crashed", "completed", "failed", "cancelled", "deleted"];
const EVENT_TYPES = ["job.submitted", "job.scheduled", "job.awaiting", "job.queued",
  "job.started", "job.progress", "job.step", "job.output", "job.log", "job.checkpoint",
  "job.paused", "job.resumed", "job.stopping", "job.retrying", "job.completed",
  "job.failed", "job.cancelled", "job.crashed", "job.recovered", "job.deleted",
  "schedule.fired", "queue.paused", "queue.resumed", "server.up", "server.down",
  "resource.alert", "resource.cleared", "job.usage", "worker.connected",
  "worker.disconnected"];
const ACTIVE = new Set(["running", "paused", "stopping"]);
// Which controls DESIGN's state machine allows from each state.
const CONTROLS = [
  ["pause", "Pause", s => s === "running"],
  ["resume", "Resume", s => s === "paused"],
  ["stop", "Stop", s => s === "running" || s === "paused"],
  ["stop?force=true", "Force stop", s => ACTIVE.has(s)],
  ["cancel", "Cancel", s => ["scheduled", "awaiting", "queued", "running", "paused"].includes(s)],
  ["retry", "Retry", s => ["completed", "failed", "cancelled", "deleted"].includes(s)],
  ["retry?from_checkpoint=true", "Retry from checkpoint", s => ["completed", "failed", "cancelled", "deleted"].includes(s)],
  ["delete", "Delete", s => ["completed", "failed", "cancelled"].includes(s)],
];

// ---- the API ----------------------------------------------------------------------

// `dashboard`: the server's settings for this page (from /api/whoami).
const session = { token: sessionStorage.getItem("baton.token"), role: null, dashboard: { stalled_after_ms: 120000 } };

class ApiError extends Error {
  constructor(status, code, message, field) { super(message); this.status = status; this.code = code; this.field = field; }
}

async function api(method, path, body) {
  const headers = {};
  if (session.token) headers.authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const err = data && data.error ? data.error : { code: String(res.status), message: text || res.statusText };
    if (res.status === 401) signIn(err.message);
    throw new ApiError(res.status, err.code, err.message, err.field);
  }
  return data;
}

// ---- small helpers ------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

const enc = encodeURIComponent;
const stateTag = s => el("span", { class: `state ${s}`, "data-state": s }, s);
const jobLink = id => el("a", { href: `#/jobs/${enc(id)}` }, id);

// Times as the person chose (remembered): local, UTC or relative.
const prefs = {
  time: localStorage.getItem("baton.time") || "local",
  theme: localStorage.getItem("baton.theme") || "system",
  // A job that ran this long (ms) is told when it completes.
  long: Number(localStorage.getItem("baton.long") ?? 60000),
};

// One formatter for every local time (making one per call costs more than the rest of a row).
const localTime = new Intl.DateTimeFormat(undefined, {
  year: "numeric", month: "numeric", day: "numeric", hour: "numeric", minute: "numeric", second: "numeric",
});

function when(t) {
  if (!t) return "–";
  const d = new Date(t);
  let text;
  if (prefs.time === "utc") text = d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  else if (prefs.time === "relative") {
    const s = Math.round((Date.now() - d.getTime()) / 1000);
    text = s >= 0 ? `${duration(s * 1000)} ago` : `in ${duration(-s * 1000)}`;
  } else text = localTime.format(d);
  return el("time", { datetime: t, title: d.toISOString() }, text);
}

function duration(ms) {
  if (!isFinite(ms) || ms < 0) return "–";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function bar(fraction) {
  const inner = el("span");
  inner.style.width = `${Math.round((fraction || 0) * 100)}%`;
  return el("div", { class: "bar", role: "progressbar", "aria-valuenow": Math.round((fraction || 0) * 100) }, inner);
}

function setBar(node, fraction) {
  node.setAttribute("aria-valuenow", Math.round((fraction || 0) * 100));
  node.firstChild.style.width = `${Math.round((fraction || 0) * 100)}%`;
}

function toast(text, bad = false) {
  const t = el("div", { class: bad ? "toast bad" : "toast", role: "status" }, text);
  document.getElementById("toasts").append(t);
  setTimeout(() => t.remove(), 6000);
}

function showError(target, err) {
  target.replaceChildren(el("p", { class: "error", role: "alert" }, err.message || String(err)));
}

// ---- the stream -----------------------------------------------------------------------

const stream = {
  source: null, lastId: null, lastAt: null, pending: [], scheduled: false, retry: 500,
  listeners: new Set(),
};

function setConn(state) {
  const c = document.getElementById("conn");
  c.dataset.state = state;
  const last = stream.lastAt ? ` · last event ${stream.lastAt.toLocaleTimeString()}` : "";
  c.textContent = state === "live" ? "live" : `${state}${last}`;
}

function connect() {
  const q = new URLSearchParams();
  if (stream.lastId !== null) q.set("after", stream.lastId);
  if (session.token) q.set("token", session.token);
  const source = new EventSource(`/api/events?${q}`);
  stream.source = source;
  source.onopen = () => { stream.retry = 500; setConn("live"); };
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) {
      // The browser gave up (the server answered an error): try again, from the last id.
      setConn("offline");
      stream.retry = Math.min(stream.retry * 2, 10000);
      setTimeout(() => { if (stream.source === source) connect(); }, stream.retry);
    } else {
      setConn("reconnecting");
    }
  };
  const onFrame = frame => {
    const event = JSON.parse(frame.data);
    stream.lastId = event.id;
    stream.lastAt = new Date();
    stream.pending.push(event);
    // At most one render per animation frame, however fast events come; a hidden tab
    // keeps them and catches up when it shows again.
    if (!stream.scheduled) {
      stream.scheduled = true;
      requestAnimationFrame(flush);
    }
  };
  for (const type of EVENT_TYPES) source.addEventListener(type, onFrame);
  // The stream resumed after events that retention has since removed: what the page
  // shows may miss some of them, so it is read again.
  source.addEventListener("events.pruned", () => {
    toast("Events missed while away were removed by retention; the page was reloaded.");
    route();
  });
}

function flush() {
  stream.scheduled = false;
  const batch = stream.pending;
  stream.pending = [];
  for (const listener of stream.listeners) {
    try { listener(batch); } catch (e) { console.error(e); }
  }
}

function listen(fn) { stream.listeners.add(fn); return () => stream.listeners.delete(fn); }

// Listens from now on, for a view that reads the API first: the events that arrive
// while it loads are kept and handed to its listener, in order and before any later
// ones, once it is ready, so that a change made between its read and its listen (a
// job ending while its history loads) is not lost. The listener must take an event
// that its read already showed (by skipping it, or by reading again).
function listenSoon() {
  const kept = [];
  const stop = listen(batch => kept.push(...batch));
  return fn => {
    stop();
    if (kept.length) {
      try { fn(kept); } catch (e) { console.error(e); }
    }
    return listen(fn);
  };
}

// ---- views --------------------------------------------------------------------------

let current = null;

async function route() {
  if (current && current.dispose) current.dispose();
  current = null;
  const main = document.getElementById("main");
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  let view;
  if (parts.length === 0) view = overview;
  else if (parts[0] === "jobs" && parts.length === 1) view = jobs;
  else if (parts[0] === "jobs" && parts.length === 2) view = job;
  else if (parts[0] === "submit") view = submit;
  else if (parts[0] === "queues") view = queuesView;
  else if (parts[0] === "servers") view = serversView;
  else if (parts[0] === "pipelines") view = pipelinesView;
  else if (parts[0] === "events") view = eventsView;
  else if (parts[0] === "workflows" && parts.length === 1) view = workflowsView;
  else if (parts[0] === "workflows" && parts.length === 2) view = workflow;
  else if (parts[0] === "schedules" && parts.length === 1) view = schedules;
  else if (parts[0] === "schedules" && parts.length === 2) view = schedule;
  else { main.replaceChildren(el("p", {}, "No such page. ", el("a", { href: "#/" }, "Overview"))); return; }
  current = { dispose: null };
  try {
    const mine = current;
    const dispose = await view(main, parts, params);
    if (current === mine) mine.dispose = dispose; else if (dispose) dispose();
  } catch (e) {
    if (!(e instanceof ApiError && e.status === 401)) showError(main, e);
  }
}

async function overview(main) {
  const ready = listenSoon();
  const [stats, running, failed, queues, servers, rates] = await Promise.all([
    api("GET", "/api/stats"),
    api("GET", "/api/jobs?state=running,paused,stopping&limit=50"),
    api("GET", "/api/jobs?state=failed&limit=10"),
    api("GET", "/api/queues"),
    api("GET", "/api/servers"),
    api("GET", `/api/throughput?window=${enc(prefs.window || "15m")}`),
  ]);
  const chart = throughputChart(rates);
  const counts = { ...stats.states };
  const countNodes = {};
  const cards = el("div", { class: "cards", id: "counters" }, STATES.filter(s => s !== "deleted").map(s => {
    countNodes[s] = el("div", { class: "n", "data-count": s }, counts[s] || 0);
    return el("a", { class: "card", href: `#/jobs?state=${s}` }, countNodes[s], el("div", { class: "l" }, s));
  }));

  const runningBody = el("tbody", { id: "running" });
  const rows = new Map();
  const addRunning = j => {
    if (rows.has(j.id)) return;
    const b = bar(j.progress);
    const step = el("td", {}, j.step || "");
    const eta = el("td", { class: "num hide-narrow" }, "–");
    const state = el("td", {}, stateTag(j.state));
    const tr = el("tr", { "data-job": j.id }, el("td", {}, jobLink(j.id)), el("td", {}, j.kind), state,
      el("td", {}, b), step, eta);
    rows.set(j.id, { tr, bar: b, step, eta, state, rate: progressRate() });
    runningBody.append(tr);
  };
  running.jobs.forEach(addRunning);

  const failedBody = el("tbody", { id: "failures" }, failed.jobs.map(j => failureRow(j.id, j.kind, j.error, j.finished_at)));

  main.replaceChildren(
    el("h1", {}, "Overview"),
    cards,
    chart.node,
    el("h2", {}, "Running now"),
    el("table", {}, el("thead", {}, el("tr", {}, ["Job", "Kind", "State", "Progress", "Step", "ETA"].map(h => el("th", {}, h)))), runningBody),
    el("h2", {}, "Recent failures"),
    el("table", {}, el("thead", {}, el("tr", {}, ["Job", "Kind", "Error", "When"].map(h => el("th", {}, h)))), failedBody),
    el("h2", {}, "Queues"),
    el("table", {}, el("thead", {}, el("tr", {}, ["Queue", "Concurrency", "Running", "Queued", "Paused"].map(h => el("th", {}, h)))),
      el("tbody", {}, queues.queues.map(q => el("tr", {}, el("td", {}, el("a", { href: `#/jobs?queue=${enc(q.name)}` }, q.name)),
        el("td", { class: "num" }, q.concurrency ?? "–"), el("td", { class: "num" }, q.running),
        el("td", { class: "num" }, q.counts.queued || 0), el("td", {}, q.paused ? "paused" : q.held ? `held: ${q.held}` : ""))))),
    el("h2", {}, "Servers"),
    el("table", {}, el("thead", {}, el("tr", {}, ["Server", "Host", "PID", "Workers", "Heartbeat"].map(h => el("th", {}, h)))),
      el("tbody", {}, servers.servers.map(s => el("tr", {}, el("td", {}, s.id), el("td", {}, s.host), el("td", { class: "num" }, s.pid),
        el("td", { class: "num" }, s.workers), el("td", {}, s.stopped_at ? "stopped" : when(s.heartbeat_at)))))),
  );

  const unlisten = ready(batch => {
    for (const e of batch) {
      const d = e.data || {};
      // The counters were read as of stats.event_id: only later changes move them.
      if (e.id > stats.event_id && e.job_id && d.state && STATES.includes(d.state)) {
        const from = d.from;
        if (e.type !== "job.submitted" && from && counts[from] > 0) counts[from] -= 1;
        if (e.type === "job.submitted" || from) counts[d.state] = (counts[d.state] || 0) + 1;
      }
      const row = e.job_id && rows.get(e.job_id);
      if (e.type === "job.started" && !row) {
        addRunning({ id: e.job_id, kind: "", state: "running", progress: null, step: null });
        api("GET", `/api/jobs/${enc(e.job_id)}`).then(j => { const r = rows.get(j.id); if (r) r.tr.children[1].textContent = j.kind; }).catch(() => {});
      } else if (row && e.type === "job.progress") {
        setBar(row.bar, d.progress);
        row.rate.add(d.progress, Date.parse(e.at));
        const estimate = row.rate.estimate();
        if (estimate) row.eta.textContent = duration(estimate.left);
      } else if (row && e.type === "job.step") {
        row.step.textContent = d.step;
      } else if (row && d.state && ACTIVE.has(d.state)) {
        row.state.replaceChildren(stateTag(d.state));
      } else if (row && d.state && !ACTIVE.has(d.state)) {
        row.tr.remove();
        rows.delete(e.job_id);
      }
      if (e.id > stats.event_id && (e.type === "job.completed" || e.type === "job.failed")) chart.add(Date.parse(e.at), e.type === "job.failed");
      if (e.type === "job.failed" && !failedBody.querySelector(`tr[data-job="${CSS.escape(e.job_id)}"]`)) {
        failedBody.prepend(failureRow(e.job_id, "", d.error, e.at));
        while (failedBody.children.length > 10) failedBody.lastChild.remove();
      }
    }
    for (const s of Object.keys(countNodes)) countNodes[s].textContent = counts[s] || 0;
  });
  return () => { unlisten(); chart.stop(); };
}

function failureRow(id, kind, error, at) {
  return el("tr", { "data-job": id }, el("td", {}, jobLink(id)), el("td", {}, kind || ""),
    el("td", { class: "error" }, error ? `${error.code}: ${error.message.split("\n")[0]}` : ""), el("td", {}, when(at)));
}

async function jobs(main, _parts, params) {
  const filters = ["state", "queue", "kind", "label", "q", "workflow", "schedule"];
  const form = el("form", { class: "filters", id: "filters" },
    el("select", { name: "state", "aria-label": "state" }, el("option", { value: "" }, "any state"),
      STATES.map(s => el("option", { value: s, selected: params.get("state") === s }, s))),
    ["queue", "kind", "label", "q"].map(f => el("input", { name: f, placeholder: f === "q" ? "search" : f === "label" ? "label key:value" : f, value: params.get(f) || "" })),
    el("select", { name: "sort", id: "sort", "aria-label": "sort" },
      SORTS.map(([v, label]) => el("option", { value: v, selected: (params.get("sort") || "created") === v }, `newest ${label.toLowerCase()}`))),
    el("button", { type: "submit" }, "Filter"));
  const sort = params.get("sort") || "created";
  // A new order starts from its first page.
  form.querySelector("#sort").addEventListener("change", () => form.requestSubmit());
  form.addEventListener("submit", ev => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v && !(k === "sort" && v === "created")) q.set(k, v);
    location.hash = `#/jobs?${q}`;
  });
  const query = new URLSearchParams();
  for (const f of filters) if (params.get(f)) query.set(f, params.get(f));
  query.set("limit", "50");
  if (sort !== "created") query.set("sort", sort);
  if (params.get("cursor")) query.set("cursor", params.get("cursor"));
  const list = await api("GET", `/api/jobs?${query}`);
  const cells = new Map();
  const selected = new Set();
  const selection = el("span", { id: "selection", class: "muted" });
  const showSelection = () => { selection.textContent = selected.size ? `${selected.size} selected` : ""; };
  const body = el("tbody", { id: "jobs" }, list.jobs.map(j => {
    const state = el("td", {}, stateTag(j.state));
    const b = bar(j.progress);
    cells.set(j.id, { state, bar: b });
    const box = el("input", { type: "checkbox", "aria-label": `select ${j.id}`, "data-select": j.id });
    box.addEventListener("change", () => { if (box.checked) selected.add(j.id); else selected.delete(j.id); showSelection(); });
    return el("tr", { "data-job": j.id }, el("td", {}, box), el("td", {}, jobLink(j.id)), el("td", {}, j.kind), el("td", { class: "hide-narrow" }, j.queue),
      state, el("td", { class: "hide-narrow" }, b), el("td", { class: "num" }, `${j.attempt}/${j.max_attempts}`), el("td", { class: "hide-narrow" }, when(j[`${sort}_at`])));
  }));
  const all = el("input", { type: "checkbox", "aria-label": "select this page", id: "select-page" });
  all.addEventListener("change", () => {
    for (const box of body.querySelectorAll("[data-select]")) { box.checked = all.checked; if (all.checked) selected.add(box.dataset.select); else selected.delete(box.dataset.select); }
    showSelection();
  });
  // Bulk actions: on the selected rows, or on everything the filter matches.
  const scope = el("select", { id: "bulk-scope", "aria-label": "which jobs" },
    el("option", { value: "selected" }, "the selected jobs"), el("option", { value: "filter" }, "everything matching this filter"));
  const result = el("p", { id: "bulk-result", role: "status" });
  const bulk = (label, action) => {
    const b = el("button", { type: "button", "data-bulk": action, disabled: session.role === "viewer" || (action === "delete" && session.role !== "admin") }, label);
    b.addEventListener("click", async () => {
      const request = { action };
      let count;
      if (scope.value === "selected") {
        if (!selected.size) { result.textContent = "Select jobs first, or choose everything matching this filter."; result.className = "error"; return; }
        request.ids = [...selected];
        count = selected.size;
      } else {
        request.filter = {};
        for (const f of filters) if (params.get(f)) request.filter[f] = params.get(f);
        count = list.total_exact ? list.total : `at least ${list.total}`;
      }
      if (!confirm(`${label} ${count} job${count === 1 ? "" : "s"}?`)) return;
      try {
        const r = await api("POST", "/api/jobs/bulk", request);
        const refused = Object.entries(r.refused).map(([code, n]) => `${n} ${code.replace(/_/g, " ")}`);
        result.textContent = `${label}: ${r.done} of ${r.matched} done${refused.length ? `; refused: ${refused.join(", ")}` : ""}${r.capped ? `; stopped at the limit of ${r.limit}, run it again for the rest` : ""}`;
        result.className = "";
      } catch (e) { result.textContent = `${label}: ${e.message}`; result.className = "error"; }
    });
    return b;
  };
  const next = new URLSearchParams(params);
  if (list.next_cursor) next.set("cursor", list.next_cursor);
  main.replaceChildren(
    el("h1", {}, "Jobs"), form,
    el("p", { class: "muted", id: "total", title: list.total_exact ? "" : "counting stops here; there are more" }, `${list.total}${list.total_exact ? "" : "+"} matching`),
    el("div", { class: "controls", id: "bulk" }, scope, ["Retry", "Cancel", "Pause", "Resume", "Delete"].map(l => bulk(l, l.toLowerCase())), selection),
    result,
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, all), ["Job", "Kind", "Queue", "State", "Progress", "Attempt", SORTS.find(([v]) => v === sort)[1]].map(h => el("th", {}, h)))), body),
    list.next_cursor ? el("p", {}, el("a", { href: `#/jobs?${next}` }, "Older →")) : null,
  );
  return listen(batch => {
    for (const e of batch) {
      const c = e.job_id && cells.get(e.job_id);
      if (!c) continue;
      if (e.data && e.data.state) c.state.replaceChildren(stateTag(e.data.state));
      if (e.type === "job.progress") setBar(c.bar, e.data.progress);
    }
  });
}

// ---- the job page -------------------------------------------------------------------
// One function per part (progress, log, checkpoints, links, crash); each takes the
// job's events, from its history first and then from the stream, in seq order.

async function job(main, parts) {
  const id = parts[1];
  const path = `/api/jobs/${enc(id)}`;
  const ready = listenSoon();
  const [j, attempts, history, checkpoints, dependencies, dependents] = await Promise.all([
    api("GET", path), api("GET", `${path}/attempts`), api("GET", `${path}/events`),
    api("GET", `${path}/checkpoints`), api("GET", `${path}/dependencies`), api("GET", `${path}/dependents`),
  ]);
  let state = j.state;
  let requested = null;
  let changes = 0; // state changes the stream has told of

  const stateCell = el("dd", { id: "job-state" }, stateTag(state));
  // A queued job that a full concurrency limit holds says which; gone once it starts.
  const waiting = j.waiting_for ? [el("dt", {}, "Waiting for"), el("dd", { id: "job-waiting" }, j.waiting_for)] : [];
  const note = el("span", { class: "muted", id: "job-note" });
  const step = el("dd", { id: "job-step" }, j.step || "–");
  const outcome = el("p", { id: "job-outcome", role: "status" });
  const buttons = CONTROLS.map(([action, label, allowed]) => {
    const b = el("button", { "data-action": action, type: "button" }, label);
    b.addEventListener("click", async () => {
      if (action === "delete" && !confirm(`Delete job ${id}?`)) return;
      b.disabled = true;
      const before = changes;
      try {
        const method = action === "delete" ? "DELETE" : "POST";
        const after = await api(method, action === "delete" ? path : `${path}/${action}`);
        outcome.textContent = `${label}: done`;
        outcome.className = "";
        // The stream may have told of later changes already: the answer is older news.
        if (changes === before) {
          if (action === "pause" && after.state !== "paused") { requested = "pause"; note.textContent = "pause requested"; }
          update(after.state);
        } else refresh();
      } catch (e) {
        outcome.textContent = `${label}: ${e.message}`;
        outcome.className = "error";
        refresh();
      }
    });
    return [b, allowed];
  });
  const refresh = () => { for (const [b, allowed] of buttons) b.disabled = !allowed(state) || session.role === "viewer"; };
  const update = s => {
    state = s;
    stateCell.replaceChildren(stateTag(s));
    if (s !== "queued") for (const n of waiting) n.remove();
    if (requested === "pause" && s !== "running") { requested = null; note.textContent = ""; }
    refresh();
  };
  refresh();

  const what = j.command ? j.command.join(" ") : j.pipeline ? `pipeline ${j.pipeline}` : j.steps ? `steps ${j.steps.map(s => s.name).join(", ")}` : "handler";
  const timeline = el("tbody", { id: "timeline" });
  let lastAt = null;
  const addEvent = e => {
    const gap = lastAt ? duration(Date.parse(e.at) - lastAt) : "";
    lastAt = Date.parse(e.at);
    timeline.append(el("tr", {}, el("td", { class: "num" }, e.seq), el("td", {}, e.type), el("td", {}, when(e.at)), el("td", { class: "num" }, gap),
      el("td", { class: "hide-narrow" }, summary(e))));
  };
  const attemptsBody = el("tbody", { id: "attempts" });
  const drawAttempts = list => attemptsBody.replaceChildren(...list.map(a => el("tr", {},
    el("td", { class: "num" }, a.attempt), el("td", {}, a.outcome || "running"), el("td", { class: "num" }, a.exit_code ?? a.signal ?? "–"),
    el("td", {}, when(a.started_at)), el("td", { class: "num" }, a.finished_at ? duration(Date.parse(a.finished_at) - Date.parse(a.started_at)) : "–"),
    el("td", {}, a.resumed_from ? `checkpoint ${a.resumed_from.seq}` : "–"),
    el("td", { class: "error" }, a.error ? `${a.error.code}: ${a.error.message.split("\n")[0]}` : ""))));
  drawAttempts(attempts.attempts);

  const progress = jobProgress(j);
  const log = jobLog(id);
  const saved = jobCheckpoints(checkpoints.checkpoints);
  const links = jobLinks(dependencies.jobs, dependents.jobs);
  const crash = jobCrash();
  const result = el("dd", { id: "job-result" }, resultView(j.result));
  // The checkpoints in the history are read from their own endpoint; only new ones here.
  const take = (e, live) => {
    addEvent(e);
    for (const view of [progress, log, crash]) view.event(e, live);
    if (live && e.type === "job.checkpoint") saved.event(e);
  };
  history.events.forEach(e => take(e, false));

  main.replaceChildren(
    el("h1", {}, `Job ${id} `, note),
    el("dl", { class: "kv" },
      el("dt", {}, "State"), stateCell,
      waiting,
      el("dt", {}, "Runs"), el("dd", { id: "job-runs" }, what),
      el("dt", {}, "Queue"), el("dd", {}, `${j.queue} (priority ${j.priority})`),
      el("dt", {}, "Attempt"), el("dd", { id: "job-attempt" }, `${j.attempt} of ${j.max_attempts}`),
      el("dt", {}, "Progress"), progress.node,
      el("dt", {}, "Step"), step,
      el("dt", {}, "Created"), el("dd", {}, when(j.created_at)),
      j.workflow_id ? [el("dt", {}, "Workflow"), el("dd", {}, el("a", { href: `#/workflows/${enc(j.workflow_id)}`, id: "job-workflow" }, j.workflow_id))] : null,
      j.schedule_id ? [el("dt", {}, "Schedule"), el("dd", {}, el("a", { href: `#/schedules/${enc(j.schedule_id)}` }, j.schedule_id))] : null,
      links.nodes,
      el("dt", {}, "Labels"), el("dd", {}, Object.entries(j.labels).map(([k, v]) => `${k}:${v}`).join(" ") || "–"),
      el("dt", {}, "Error"), el("dd", { class: "error", id: "job-error" }, j.error ? `${j.error.code}: ${j.error.message}` : "–"),
      el("dt", {}, "Result"), result),
    el("div", { class: "controls", id: "controls" }, buttons.map(([b]) => b)), outcome,
    crash.node,
    el("h2", {}, "Output and logs"), log.node,
    el("h2", {}, "Checkpoints"), saved.node,
    el("h2", {}, "Attempts"),
    el("table", {}, el("thead", {}, el("tr", {}, ["#", "Outcome", "Exit", "Started", "Took", "Resumed from", "Error"].map(h => el("th", {}, h)))), attemptsBody),
    el("h2", {}, "Timeline"),
    el("table", {}, el("thead", {}, el("tr", {}, ["Seq", "Event", "At", "After", "Data"].map(h => el("th", {}, h)))), timeline),
  );
  log.follow();

  // A local clock moves the stalled mark and the ages; it asks the server nothing.
  const tick = setInterval(() => { progress.tick(state); saved.tick(); }, 1000);
  progress.tick(state);
  let seen = history.events.length ? history.events[history.events.length - 1].seq : 0;
  const unlisten = ready(batch => {
    let ended = false;
    for (const e of batch) {
      links.other(e);
      if (e.job_id !== id || e.seq <= seen) continue;
      seen = e.seq;
      take(e, true);
      const d = e.data || {};
      if (d.state) { changes += 1; update(d.state); }
      if (e.type === "job.step") step.textContent = d.step;
      if (e.type === "job.failed" || e.type === "job.retrying") document.getElementById("job-error").textContent = d.error ? `${d.error.code}: ${d.error.message}` : "";
      if (d.state && !ACTIVE.has(d.state) || e.type === "job.started") ended = true;
    }
    progress.tick(state);
    if (ended) {
      api("GET", `${path}/attempts`).then(a => drawAttempts(a.attempts)).catch(() => {});
      api("GET", path).then(now => {
        result.replaceChildren(resultView(now.result));
        document.getElementById("job-attempt").textContent = `${now.attempt} of ${now.max_attempts}`;
      }).catch(() => {});
    }
  });
  return () => { unlisten(); clearInterval(tick); };
}

function resultView(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "object") return JSON.stringify(value);
  return el("pre", { class: "data" }, JSON.stringify(value, null, 2));
}

// The speed of a job's progress and the time it still needs, from the first sample
// seen and the latest (progress that goes back, as a new attempt's does, starts over).
// The overview's running table and the job's page both use it.
function progressRate() {
  let first = null, last = null;
  return {
    add(p, at) {
      if (p === null || p === undefined) return;
      if (!first || p < last.p) first = { p, at };
      last = { p, at };
    },
    estimate() {
      if (!first || last.p <= first.p || last.at <= first.at) return null;
      const perMs = (last.p - first.p) / (last.at - first.at);
      return { perMs, left: (1 - last.p) / perMs, rate: rateWords(perMs) };
    },
  };
}

function rateWords(perMs) {
  const perSecond = perMs * 1000 * 100;
  if (perSecond >= 1) return `${perSecond.toFixed(1)}%/s`;
  if (perSecond * 60 >= 1) return `${(perSecond * 60).toFixed(1)}%/min`;
  return `${(perSecond * 3600).toFixed(1)}%/h`;
}

// The bar with its message, rate and time left, and the stalled mark: a running job
// with no progress, step, output or log line for the server's `stalled_after`.
function jobProgress(j) {
  const b = bar(j.progress);
  b.id = "job-progress";
  const message = el("span", { id: "job-message" }, j.message || "");
  const rate = el("span", { id: "job-rate", class: "muted" });
  const stalled = el("span", { id: "job-stalled", class: "stalled", role: "status", hidden: true });
  const node = el("dd", { class: "progress" }, b, message, rate, stalled);
  let rates = progressRate();
  let active = null; // when the job last did something (ms, this browser's clock)
  const stallAfter = session.dashboard.stalled_after_ms;
  const drawRate = () => {
    const est = rates.estimate();
    rate.textContent = est ? `${est.rate} · about ${duration(est.left)} left` : "";
  };
  return {
    node,
    event(e, live) {
      const d = e.data || {};
      const at = live ? Date.now() : Date.parse(e.at);
      if (e.type === "job.started") { rates = progressRate(); active = at; }
      if (e.type === "job.resumed") active = at;
      if (["job.progress", "job.step", "job.output", "job.log"].includes(e.type)) active = at;
      if (e.type === "job.progress") {
        setBar(b, d.progress);
        message.textContent = d.message || "";
        rates.add(d.progress, Date.parse(e.at));
        drawRate();
      }
      if (e.type === "job.completed") { setBar(b, 1); rate.textContent = ""; }
    },
    tick(state) {
      const quiet = active === null ? 0 : Date.now() - active;
      const isStalled = state === "running" && quiet >= stallAfter;
      stalled.hidden = !isStalled;
      stalled.textContent = isStalled ? `stalled: nothing new for ${duration(quiet)}` : "";
      if (state !== "running") rate.textContent = "";
    },
  };
}

// Output and log lines with lifecycle markers between them; search narrows the lines
// and marks the text; "follow" keeps the newest in sight; download saves every line.
function jobLog(id) {
  const pre = el("pre", { class: "log", id: "job-log" });
  const search = el("input", { id: "log-search", type: "search", placeholder: "search the log", "aria-label": "search the log" });
  const count = el("span", { id: "log-count", class: "muted" });
  const follow = el("input", { id: "log-follow", type: "checkbox", checked: true });
  const download = el("button", { id: "log-download", type: "button" }, "Download");
  let lines = 0, matching = 0;
  const needle = () => search.value.trim().toLowerCase();
  const show = (node, q) => {
    const text = node.dataset.text;
    const at = q ? text.toLowerCase().indexOf(q) : -1;
    node.hidden = q !== "" && at < 0;
    if (at < 0) node.replaceChildren(`${text}\n`);
    else node.replaceChildren(text.slice(0, at), el("mark", {}, text.slice(at, at + q.length)), `${text.slice(at + q.length)}\n`);
    return !node.hidden;
  };
  const counted = () => {
    count.textContent = needle() ? `${matching} of ${lines} line${lines === 1 ? "" : "s"} match` : `${lines} line${lines === 1 ? "" : "s"}`;
  };
  const add = (text, marker) => {
    if (marker) { pre.append(el("span", { class: "marker" }, `— ${text} —\n`)); return; }
    const node = el("span", { class: "line", "data-text": text });
    lines += 1;
    if (show(node, needle())) matching += 1;
    pre.append(node);
    counted();
    if (follow.checked) pre.scrollTop = pre.scrollHeight;
  };
  search.addEventListener("input", () => {
    const q = needle();
    matching = 0;
    for (const node of pre.querySelectorAll(".line")) if (show(node, q)) matching += 1;
    counted();
  });
  follow.addEventListener("change", () => { if (follow.checked) pre.scrollTop = pre.scrollHeight; });
  // Scrolling up to read stops following; scrolling back to the end follows again.
  pre.addEventListener("scroll", () => { follow.checked = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4; });
  download.addEventListener("click", async () => {
    download.disabled = true;
    try { saveText(`${id}.log`, (await allLogLines(id)).map(l => `${l.line}\n`).join("")); }
    catch (e) { toast(`download: ${e.message}`, true); }
    finally { download.disabled = false; }
  });
  counted();
  const node = el("div", { class: "log-view" },
    el("div", { class: "filters" }, search, count, el("label", {}, follow, " follow"), download), pre);
  return {
    node,
    follow: () => { pre.scrollTop = pre.scrollHeight; },
    event(e) {
      const d = e.data || {};
      if (e.type === "job.log") add(d.line);
      else if (e.type === "job.output") add(d.text);
      else if (e.type === "job.checkpoint") add(`checkpoint ${e.seq}`, true);
      else if (["job.paused", "job.resumed", "job.crashed", "job.recovered", "job.started"].includes(e.type)) add(e.type.slice(4), true);
    },
  };
}

// Every captured line of a job, page after page (the API's default page size).
async function allLogLines(id) {
  const PAGE = 1000;
  const out = [];
  let after = 0;
  for (;;) {
    const page = await api("GET", `/api/jobs/${enc(id)}/logs?after=${after}&limit=${PAGE}`);
    out.push(...page.lines);
    if (page.lines.length < PAGE) return out;
    after = page.next;
  }
}

function saveText(name, text) {
  const url = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
  const a = el("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

// Checkpoints: which attempt saved each, when, its size and (folded) its data.
function jobCheckpoints(list) {
  const body = el("tbody", { id: "checkpoints" });
  const row = c => {
    const text = JSON.stringify(c.data, null, 2);
    const size = new TextEncoder().encode(JSON.stringify(c.data)).length;
    return el("tr", { "data-seq": c.seq }, el("td", { class: "num" }, c.seq), el("td", {}, c.step || "–"),
      el("td", { class: "num", "data-attempt": c.attempt }, c.attempt), el("td", {}, el("span", { "data-age": c.at }, age(c.at))),
      el("td", { class: "num", "data-size": size }, `${size} B`),
      el("td", {}, el("details", {}, el("summary", {}, "data"), el("pre", { class: "data" }, text))));
  };
  const empty = el("p", { class: "muted", id: "no-checkpoints", hidden: list.length > 0 }, "No checkpoint saved.");
  body.append(...list.map(row));
  const table = el("table", { hidden: list.length === 0 },
    el("thead", {}, el("tr", {}, ["Seq", "Step", "Attempt", "Saved", "Size", "Data"].map(h => el("th", {}, h)))), body);
  return {
    node: el("div", {}, empty, table),
    event(e) {
      const d = e.data || {};
      body.append(row({ seq: e.seq, step: d.step, attempt: d.attempt, at: e.at, data: d.checkpoint }));
      empty.hidden = true;
      table.hidden = false;
    },
    tick() { for (const n of body.querySelectorAll("[data-age]")) n.textContent = age(n.dataset.age); },
  };
}

function age(t) { return `${duration(Math.max(0, Date.now() - Date.parse(t)))} ago`; }

// The jobs this one waits for and the jobs that wait for it, as links whose states
// follow the stream.
function jobLinks(dependencies, dependents) {
  const states = new Map();
  const list = (id, links) => el("dd", { id }, links.length ? links.map(l => {
    const s = el("span", {}, stateTag(l.state));
    states.set(l.job_id, s);
    return el("span", { class: "link", "data-job": l.job_id }, jobLink(l.job_id), l.name ? ` (${l.name})` : "", " ", s, " ");
  }) : "–");
  const nodes = [el("dt", {}, "Depends on"), list("job-dependencies", dependencies),
    el("dt", {}, "Dependents"), list("job-dependents", dependents)];
  return {
    nodes,
    other(e) {
      const s = e.job_id && states.get(e.job_id);
      if (s && e.data && e.data.state) s.replaceChildren(stateTag(e.data.state));
    },
  };
}

// The last crash: when the engine died (after the dead server's last heartbeat), the
// job's last sign of life, its last checkpoint and what ran after it.
function jobCrash() {
  const node = el("section", { id: "job-crash", class: "crash", hidden: true });
  return {
    node,
    event(e) {
      if (e.type !== "job.crashed") return;
      const d = e.data || {};
      const since = d.since_checkpoint || {};
      const cp = d.checkpoint;
      const row = (k, id, ...v) => [el("dt", {}, k), el("dd", { id }, ...v)];
      node.replaceChildren(el("h2", {}, "Last crash"), el("dl", { class: "kv" },
        row("Noticed", "crash-at", when(e.at), d.was ? ` (the job was ${d.was})` : "", d.reason ? `: ${d.reason}` : ""),
        row("Engine died", "crash-died", d.heartbeat_at ? ["after ", when(d.heartbeat_at), ", its last heartbeat"] : "unknown",
          d.server_id ? ` (server ${d.server_id})` : ""),
        row("Last sign of life", "crash-last", when(d.last_event_at)),
        row("Last checkpoint", "crash-checkpoint", cp ? [`#${cp.seq} of attempt ${cp.attempt}, `, when(cp.at)] : "none"),
        row(cp ? "Since then" : "Since the start", "crash-since", [[since.progress, "progress update"], [since.steps, "step"],
          [since.output, "output"], [since.log_lines, "log line"]].map(([n, what]) => `${n || 0} ${what}${n === 1 ? "" : "s"}`).join(", "))));
      node.hidden = false;
    },
  };
}

function summary(e) {
  const d = e.data || {};
  if (e.type === "job.progress") return `${Math.round((d.progress || 0) * 100)}% ${d.message || ""}`;
  if (e.type === "job.log") return d.line;
  if (e.type === "job.usage") {
    const mb = n => `${Math.round((n || 0) / 1e6)} MB`;
    return `CPU ${((d.cpu_ms || 0) / 1000).toFixed(1)} s, ${mb(d.rss_bytes)} resident (peak ${mb(d.peak_rss_bytes)})`;
  }
  if (d.error) return `${d.error.code}: ${d.error.message.split("\n")[0]}`;
  if (d.state) return d.from ? `${d.from} → ${d.state}` : d.state;
  return "";
}

async function submit(main) {
  const [queues, pipelines] = await Promise.all([api("GET", "/api/queues"), api("GET", "/api/pipelines")]);
  const error = el("p", { class: "error", id: "submit-error", role: "alert" });
  const queueSelect = () => el("select", { name: "queue", "aria-label": "queue" }, queues.queues.map(q => el("option", { value: q.name }, q.name)));
  const form = el("form", { id: "submit-form", class: "kv" },
    el("label", { for: "f-command" }, "Command"), el("textarea", { id: "f-command", name: "command", rows: 3, required: true, placeholder: "python3 scrape.py --site alfabeta" }),
    el("label", { for: "f-shell" }, "Through sh -c"), el("input", { id: "f-shell", name: "shell", type: "checkbox", checked: true }),
    el("label", {}, "Queue"), queueSelect(),
    el("label", { for: "f-priority" }, "Priority"), el("input", { id: "f-priority", name: "priority", type: "number", value: "0" }),
    el("label", { for: "f-delay" }, "Delay"), el("input", { id: "f-delay", name: "delay", placeholder: "30s, 10m (optional)" }),
    el("label", { for: "f-attempts" }, "Attempts"), el("input", { id: "f-attempts", name: "max_attempts", type: "number", min: "1", placeholder: "3" }),
    el("label", { for: "f-labels" }, "Labels"), el("input", { id: "f-labels", name: "labels", placeholder: "source=alfabeta, team=data" }),
    el("label", { for: "f-env" }, "Environment"), el("textarea", { id: "f-env", name: "env", rows: 2, placeholder: "KEY=value, one a line" }),
    el("span"), el("div", {}, el("button", { class: "primary", type: "submit" }, "Submit")));
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const f = new FormData(form);
    const text = f.get("command").trim();
    const shell = form.shell.checked;
    const spec = { kind: "command", command: shell ? [text] : text.split(/\s+/), queue: f.get("queue"), priority: Number(f.get("priority") || 0) };
    if (shell) spec.shell = true;
    if (f.get("delay")) spec.delay = f.get("delay").trim();
    if (f.get("max_attempts")) spec.max_attempts = Number(f.get("max_attempts"));
    const pairs = (value, sep) => Object.fromEntries(value.split(sep).map(p => p.trim()).filter(Boolean).map(p => {
      const i = p.indexOf("=");
      return i < 0 ? [p, ""] : [p.slice(0, i).trim(), p.slice(i + 1)];
    }));
    if (f.get("labels").trim()) spec.labels = pairs(f.get("labels"), ",");
    if (f.get("env").trim()) spec.env = pairs(f.get("env"), "\n");
    try {
      const created = await api("POST", "/api/jobs", spec);
      location.hash = `#/jobs/${enc(created.id)}`;
    } catch (e) { error.textContent = e.message; }
  });
  const runError = el("p", { class: "error", id: "run-error", role: "alert" });
  const run = el("form", { id: "run-form", class: "filters" },
    el("select", { name: "pipeline", "aria-label": "pipeline" }, pipelines.pipelines.map(p => el("option", { value: p.id }, p.id))),
    el("button", { type: "submit", disabled: pipelines.pipelines.length === 0 }, "Run pipeline"));
  run.addEventListener("submit", async ev => {
    ev.preventDefault();
    const id = new FormData(run).get("pipeline");
    if (!confirm(`Run pipeline ${id}?`)) return;
    try {
      const created = await api("POST", "/api/jobs", { kind: "pipeline", pipeline: id });
      location.hash = `#/jobs/${enc(created.id)}`;
    } catch (e) { runError.textContent = e.message; }
  });
  main.replaceChildren(el("h1", {}, "Submit a job"), form, error,
    el("h2", {}, "Run a stored pipeline"), pipelines.pipelines.length ? run : el("p", { class: "muted" }, "No pipeline is stored."), runError);
}

// Completed and failed jobs per second (15 minutes) or per minute (an hour, a day):
// read once, then moved by the stream's events; a local clock slides the window.
function throughputChart(data) {
  const W = 900, H = 110;
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("id", "throughput");
  svg.setAttribute("preserveAspectRatio", "none");
  const line = cls => { const p = document.createElementNS(svgNS, "polyline"); p.setAttribute("class", cls); svg.append(p); return p; };
  const ok = line("completed"), bad = line("failed");
  const size = data.bucket_seconds * 1000;
  let end = Date.parse(data.end);
  const completed = data.completed.slice(), failed = data.failed.slice();
  const peak = el("span", { class: "muted", id: "throughput-peak" });
  const draw = () => {
    const max = Math.max(1, ...completed, ...failed);
    const pts = arr => arr.map((v, i) => `${(i / (arr.length - 1)) * W},${H - (v / max) * (H - 10)}`).join(" ");
    ok.setAttribute("points", pts(completed));
    bad.setAttribute("points", pts(failed));
    peak.textContent = `peak ${max} per ${data.bucket_seconds === 1 ? "second" : "minute"}; now ${completed[completed.length - 1]} completed, ${failed[failed.length - 1]} failed`;
  };
  const slide = now => {
    while (now >= end) { completed.shift(); failed.shift(); completed.push(0); failed.push(0); end += size; }
  };
  const add = (at, isFailed) => {
    slide(at);
    const i = completed.length - 1 - Math.floor((end - 1 - at) / size);
    if (i < 0) return;
    if (isFailed) failed[i] += 1; else completed[i] += 1;
    draw();
  };
  const windowSelect = el("select", { id: "throughput-window", "aria-label": "window" },
    [["15m", "last 15 minutes"], ["1h", "last hour"], ["1d", "last day"]].map(([v, l]) => el("option", { value: v, selected: data.window === v }, l)));
  windowSelect.addEventListener("change", () => { prefs.window = windowSelect.value; route(); });
  // The clock only moves the picture; it asks the server nothing.
  const tick = setInterval(() => { slide(Date.now()); draw(); }, size);
  draw();
  const node = el("div", { class: "chart" }, el("h2", {}, "Completed and failed ", windowSelect, " ", peak), svg);
  return { node, add, stop: () => clearInterval(tick) };
}

// Layers for a DAG: each node one layer below its deepest parent; within a layer,
// nodes ordered by the mean position of their parents, so that edges cross less.
function layout(nodes, edges) {
  const parents = new Map(nodes.map(n => [n.id, []]));
  for (const e of edges) if (parents.has(e.to) && parents.has(e.from)) parents.get(e.to).push(e.from);
  const depth = new Map();
  const visit = (id, seen = new Set()) => {
    if (depth.has(id)) return depth.get(id);
    if (seen.has(id)) return 0;
    seen.add(id);
    const d = parents.get(id).reduce((m, p) => Math.max(m, visit(p, seen) + 1), 0);
    depth.set(id, d);
    return d;
  };
  nodes.forEach(n => visit(n.id));
  const layers = [];
  for (const n of nodes) (layers[depth.get(n.id)] ||= []).push(n.id);
  const pos = new Map();
  layers.forEach((layer, i) => {
    if (i > 0) {
      const key = id => { const ps = parents.get(id); return ps.length ? ps.reduce((a, p) => a + pos.get(p).x, 0) / ps.length : 0; };
      layer.sort((a, b) => key(a) - key(b));
    }
    layer.forEach((id, j) => pos.set(id, { x: j, y: i }));
  });
  return { pos, layers, parents };
}

// The critical path: the chain of dependencies that took (or is taking) longest.
function criticalPath(nodes, parents) {
  const byId = new Map(nodes.map(n => [n.id, n]));
  const took = n => n.started_at ? (n.finished_at ? Date.parse(n.finished_at) : Date.now()) - Date.parse(n.started_at) : 0;
  const best = new Map();
  const longest = id => {
    if (best.has(id)) return best.get(id);
    best.set(id, { total: 0, prev: null });
    let prev = null, total = 0;
    for (const p of parents.get(id)) { const t = longest(p).total; if (t >= total) { total = t; prev = p; } }
    const out = { total: total + took(byId.get(id)), prev };
    best.set(id, out);
    return out;
  };
  let end = null;
  for (const n of nodes) if (!end || longest(n.id).total > longest(end).total) end = n.id;
  const path = new Set();
  for (let id = end; id; id = best.get(id).prev) path.add(id);
  return path;
}

async function workflow(main, parts) {
  const id = parts[1];
  let graph = await api("GET", `/api/workflows/${enc(id)}`);
  const W = 170, H = 46, GX = 40, GY = 60;
  const svgNS = "http://www.w3.org/2000/svg";
  const svgEl = (tag, attrs = {}) => { const n = document.createElementNS(svgNS, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); return n; };
  const { pos, layers, parents } = layout(graph.nodes, graph.edges);
  const width = Math.max(...layers.map(l => l.length)) * (W + GX) + GX;
  const height = layers.length * (H + GY) + GY;
  const svg = svgEl("svg", { id: "dag", viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": `workflow ${id}` });
  const xy = nid => { const p = pos.get(nid); return { x: GX + p.x * (W + GX), y: GY / 2 + p.y * (H + GY) }; };
  const critical = criticalPath(graph.nodes, parents);
  for (const e of graph.edges) {
    if (!pos.has(e.from) || !pos.has(e.to)) continue;
    const a = xy(e.from), b = xy(e.to);
    const x1 = a.x + W / 2, y1 = a.y + H, x2 = b.x + W / 2, y2 = b.y;
    const onPath = critical.has(e.from) && critical.has(e.to);
    svg.append(svgEl("path", { d: `M${x1},${y1} C${x1},${y1 + GY / 2} ${x2},${y2 - GY / 2} ${x2},${y2}`, class: `edge ${e.status}${onPath ? " critical" : ""}`, "data-from": e.from, "data-to": e.to }));
  }
  const nodes = new Map();
  for (const n of graph.nodes) {
    const { x, y } = xy(n.id);
    const g = svgEl("g", { class: `node ${n.state}${critical.has(n.id) ? " critical" : ""}`, "data-job": n.id, "data-state": n.state, transform: `translate(${x},${y})`, tabindex: "0" });
    g.append(svgEl("rect", { width: W, height: H, rx: 6 }));
    const fill = svgEl("rect", { class: "fill", x: 0, y: H - 5, height: 5, width: W * (n.progress || 0), rx: 2 });
    g.append(fill);
    const label = svgEl("text", { x: 10, y: 19 }); label.textContent = fit(n.name || n.id, LABEL_CHARS);
    if (label.textContent !== (n.name || n.id)) {
      const title = svgEl("title"); title.textContent = n.name ? `${n.name} (${n.id})` : n.id;
      g.append(title);
    }
    const state = svgEl("text", { x: 10, y: 35, class: "sub" }); state.textContent = n.state;
    g.append(label, state);
    g.addEventListener("click", () => { location.hash = `#/jobs/${enc(n.id)}`; });
    g.addEventListener("keydown", ev => { if (ev.key === "Enter") location.hash = `#/jobs/${enc(n.id)}`; });
    svg.append(g);
    nodes.set(n.id, { g, fill, state, now: n.state });
  }
  let paused = graph.paused;
  const outcome = el("p", { id: "workflow-outcome", role: "status" });
  const stateLine = el("dd", { id: "workflow-state" }, graph.state);
  const control = (label, action) => {
    const b = el("button", { type: "button", "data-action": action, disabled: session.role === "viewer" }, label);
    b.addEventListener("click", async () => {
      if (action === "cancel" && !confirm(`Cancel every unfinished job of workflow ${id}?`)) return;
      try { graph = await api("POST", `/api/workflows/${enc(id)}/${action}`); paused = graph.paused; stateLine.textContent = graph.state; outcome.textContent = `${label}: done`; outcome.className = ""; }
      catch (e) { outcome.textContent = `${label}: ${e.message}`; outcome.className = "error"; }
    });
    return b;
  };
  main.replaceChildren(el("h1", {}, `Workflow ${id}`),
    el("dl", { class: "kv" }, el("dt", {}, "State"), stateLine, el("dt", {}, "Jobs"), el("dd", {}, graph.nodes.length),
      el("dt", {}, "Critical path"), el("dd", { id: "critical" }, [...critical].reverse().map(j => { const n = graph.nodes.find(x => x.id === j); return n.name || n.id; }).join(" → "))),
    el("div", { class: "controls" }, control("Pause", "pause"), control("Resume", "resume"), control("Retry", "retry"), control("Cancel", "cancel")), outcome,
    el("div", { class: "dag" }, svg));
  // Only the nodes an event names change; the workflow's state is derived here from
  // its nodes' states, as the server derives it, so a burst costs no request.
  return listen(batch => {
    let moved = false;
    for (const e of batch) {
      const n = e.job_id && nodes.get(e.job_id);
      if (!n) continue;
      const d = e.data || {};
      if (d.state && d.state !== n.now) {
        n.now = d.state;
        moved = true;
        n.g.setAttribute("data-state", d.state);
        n.g.setAttribute("class", `node ${d.state}${critical.has(e.job_id) ? " critical" : ""}`);
        n.state.textContent = d.state;
        if (d.state === "completed") n.fill.setAttribute("width", W);
      }
      if (e.type === "job.progress" && d.progress != null) n.fill.setAttribute("width", W * d.progress);
    }
    if (moved) stateLine.textContent = workflowState(paused, [...nodes.values()].map(n => n.now));
  });
}

// The longest label a node shows whole (its box is 170 px at 13 px type); longer ones
// end in an ellipsis and show whole in the node's tooltip.
const LABEL_CHARS = 20;
const fit = (text, n) => text.length > n ? `${text.slice(0, n - 1)}…` : text;

// A workflow's state from its jobs' states (baton_core's WorkflowState::derive).
function workflowState(paused, states) {
  let active = false, started = false, failed = false, cancelled = false;
  for (const s of states) {
    if (["awaiting", "queued", "scheduled"].includes(s)) active = true;
    else if (["running", "paused", "stopping", "crashed"].includes(s)) { active = true; started = true; }
    else { started = true; if (s === "failed") failed = true; if (s === "cancelled") cancelled = true; }
  }
  if (active) return paused ? "paused" : started ? "running" : "pending";
  return failed ? "failed" : cancelled ? "cancelled" : "completed";
}

// Workflows, newest first, a page at a time. Every job event of a workflow names it
// (data.workflow), so each row's counts and state follow the stream, and a workflow
// submitted while the first page is shown appears at its top.
async function workflowsView(main, _parts, params) {
  const query = new URLSearchParams({ limit: "50" });
  if (params.get("cursor")) query.set("cursor", params.get("cursor"));
  const list = await api("GET", `/api/workflows?${query}`);
  const body = el("tbody", { id: "workflows" });
  const rows = new Map();
  const draw = row => {
    const w = row.w;
    w.state = workflowState(w.paused, Object.keys(w.counts).filter(s => w.counts[s] > 0));
    row.state.replaceChildren(stateTag(w.state));
    row.jobs.textContent = w.jobs;
    row.counts.replaceChildren(...STATES.filter(s => w.counts[s] > 0).map(s => el("span", { class: `state ${s}`, "data-count": s }, `${w.counts[s]} ${s}`)));
  };
  const add = (w, top) => {
    const row = { w, state: el("td", {}), jobs: el("td", { class: "num" }), counts: el("td", { class: "counts" }) };
    const tr = el("tr", { "data-workflow": w.id }, el("td", {}, el("a", { href: `#/workflows/${enc(w.id)}` }, w.id)),
      row.state, row.jobs, row.counts, el("td", { class: "hide-narrow" }, when(w.created_at)));
    rows.set(w.id, row);
    draw(row);
    if (top) body.prepend(tr); else body.append(tr);
  };
  list.workflows.forEach(w => add(w, false));
  const next = new URLSearchParams();
  if (list.next_cursor) next.set("cursor", list.next_cursor);
  main.replaceChildren(el("h1", {}, "Workflows"),
    el("div", { class: "scroll" }, el("table", {}, el("thead", {}, el("tr", {}, ["Workflow", "State", "Jobs", "By state", "Created"].map(h => el("th", {}, h)))), body)),
    list.workflows.length ? null : el("p", { class: "muted", id: "no-workflows" }, "No workflow yet."),
    list.next_cursor ? el("p", {}, el("a", { href: `#/workflows?${next}` }, "Older →")) : null);
  return listen(batch => {
    const changed = new Set();
    for (const e of batch) {
      const d = e.data || {};
      if (!d.workflow || !d.state) continue;
      let row = rows.get(d.workflow);
      if (!row && e.type === "job.submitted" && !params.get("cursor")) {
        add({ id: d.workflow, state: "pending", paused: false, created_at: e.at, jobs: 0, counts: {} }, true);
        row = rows.get(d.workflow);
      }
      if (!row) continue;
      const c = row.w.counts;
      if (e.type === "job.submitted") row.w.jobs += 1;
      else if (d.from && c[d.from] > 0) c[d.from] -= 1;
      c[d.state] = (c[d.state] || 0) + 1;
      changed.add(row);
    }
    for (const row of changed) draw(row);
  });
}

// A trigger in words: "every day at 02:00 (Europe/London)".
function triggerWords(t, tz) {
  const at = (h, m) => `${String(h).padStart(2, "0")}:${String(m ?? 0).padStart(2, "0")}`;
  const zone = tz && tz !== "UTC" ? ` (${tz})` : " (UTC)";
  switch (t.type) {
    case "cron": return `cron ${t.expr}${zone}`;
    case "interval": return `every ${t.every}${t.start_at ? ` from ${new Date(t.start_at).toLocaleString()}` : ""}`;
    case "daily": return `every day at ${at(t.hour, t.minute)}${zone}`;
    case "weekly": return `every ${t.days.join(", ")} at ${at(t.hour, t.minute)}${zone}`;
    case "once": return `once at ${new Date(t.at).toLocaleString()}`;
    case "manual": return "by hand only";
    default: return t.type;
  }
}

async function schedules(main) {
  const ready = listenSoon();
  const list = await api("GET", "/api/schedules?limit=1000");
  const body = el("tbody", { id: "schedules" }, list.schedules.map(sc => el("tr", { "data-schedule": sc.id },
    el("td", {}, el("a", { href: `#/schedules/${enc(sc.id)}` }, sc.id)), el("td", {}, triggerWords(sc.trigger, sc.timezone)),
    el("td", {}, sc.enabled ? when(sc.next_run) : "paused"), el("td", { class: "last-run" }, when(sc.last_run), " ",
      sc.last_job ? el("a", { href: `#/jobs/${enc(sc.last_job.id)}` }, stateTag(sc.last_job.state || "gone")) : ""),
    el("td", { class: "num" }, sc.run_count))));
  main.replaceChildren(el("h1", {}, "Schedules"),
    el("table", {}, el("thead", {}, el("tr", {}, ["Schedule", "When", "Next run", "Last run", "Runs"].map(h => el("th", {}, h)))), body),
    el("h2", {}, "New schedule"), scheduleForm(null));
  const last = new Set(list.schedules.map(sc => sc.last_job && sc.last_job.id).filter(Boolean));
  return ready(async batch => {
    if (batch.some(e => e.type === "schedule.fired" || last.has(e.job_id) && e.data && e.data.state)) route();
  });
}

// The create (or edit) form: fields by trigger type, the next runs previewed as the
// person types, and the API's refusal shown at the field it names.
function scheduleForm(existing) {
  const t = existing ? existing.trigger : { type: "cron", expr: "0 2 * * *" };
  const field = (name, label, attrs = {}) => el("label", { class: "field", "data-field": name }, label, " ",
    el("input", { name, ...attrs }), el("span", { class: "field-error error", "data-error-for": name }));
  const type = el("select", { name: "type", "aria-label": "trigger" }, ["cron", "interval", "daily", "weekly", "once", "manual"].map(v => el("option", { value: v, selected: t.type === v }, v)));
  const form = el("form", { id: "schedule-form", class: "schedule-form" },
    field("id", "Id", { value: existing ? existing.id : "", required: true, readonly: !!existing }),
    el("label", { class: "field" }, "Trigger ", type),
    field("trigger.expr", "Cron", { value: t.expr || "", placeholder: "0 2 * * *" }),
    field("trigger.every", "Every", { value: t.every || "", placeholder: "6h" }),
    field("trigger.hour", "Hour", { type: "number", min: "0", max: "23", value: t.hour ?? "" }),
    field("trigger.minute", "Minute", { type: "number", min: "0", max: "59", value: t.minute ?? "" }),
    field("trigger.days", "Days", { value: (t.days || []).join(","), placeholder: "mon,fri" }),
    field("trigger.at", "At", { value: t.at || "", placeholder: "2026-05-01T10:00:00Z" }),
    field("timezone", "Time zone", { value: existing ? existing.timezone : "UTC" }),
    field("job.command", "Command (sh -c)", { value: existing && existing.job.command ? existing.job.command[0] : "", placeholder: "./nightly.sh" }),
    el("button", { class: "primary", type: "submit" }, existing ? "Save" : "Create"),
    el("p", { class: "error", id: "schedule-error", role: "alert" }));
  const preview = el("ol", { id: "schedule-preview", class: "muted" });
  const shown = { expr: ["cron"], every: ["interval"], hour: ["daily", "weekly"], minute: ["daily", "weekly"], days: ["weekly"], at: ["once"] };
  const showFields = () => {
    for (const [k, types] of Object.entries(shown)) form.querySelector(`[data-field="trigger.${k}"]`).hidden = !types.includes(type.value);
  };
  const spec = () => {
    const f = new FormData(form);
    const get = k => (f.get(k) || "").trim();
    const trigger = { type: type.value };
    if (type.value === "cron") trigger.expr = get("trigger.expr");
    if (type.value === "interval") trigger.every = get("trigger.every");
    if (type.value === "daily" || type.value === "weekly") { trigger.hour = Number(get("trigger.hour") || 0); trigger.minute = Number(get("trigger.minute") || 0); }
    if (type.value === "weekly") trigger.days = get("trigger.days").split(",").map(d => d.trim()).filter(Boolean);
    if (type.value === "once") trigger.at = get("trigger.at");
    const job = existing ? { ...existing.job } : { kind: "command" };
    if (get("job.command")) { job.kind = "command"; job.command = [get("job.command")]; job.shell = true; }
    return { id: get("id"), job, timezone: get("timezone") || "UTC", trigger };
  };
  const showError = e => {
    for (const n of form.querySelectorAll(".field-error")) n.textContent = "";
    const named = e && (e.field || (e.message.match(/\b(trigger\.[a-z_]+|timezone|job\.[a-z_]+|id)\b/) || [])[1]);
    const at = named && form.querySelector(`[data-error-for="${named}"]`);
    form.querySelector("#schedule-error").textContent = e && !at ? e.message : "";
    if (at) at.textContent = e.message;
  };
  let pending = 0;
  const refreshPreview = async () => {
    const mine = ++pending;
    try {
      const p = await api("POST", "/api/schedule-preview?count=5", spec());
      if (mine !== pending) return;
      showError(null);
      preview.replaceChildren(...(p.runs.length ? p.runs.map(r => el("li", {}, when(r))) : [el("li", {}, "no runs: it fires only when triggered")]));
    } catch (e) {
      if (mine !== pending) return;
      preview.replaceChildren();
      showError(e);
    }
  };
  type.addEventListener("change", () => { showFields(); refreshPreview(); });
  form.addEventListener("change", refreshPreview);
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    try {
      const body = spec();
      const saved = existing ? await api("PUT", `/api/schedules/${enc(existing.id)}`, body) : await api("POST", "/api/schedules", body);
      location.hash = `#/schedules/${enc(saved.id)}`;
      if (existing) route();
    } catch (e) { showError(e); }
  });
  showFields();
  refreshPreview();
  return el("div", {}, form, el("h2", {}, "Next runs"), preview);
}

async function schedule(main, parts) {
  const id = parts[1];
  const ready = listenSoon();
  const [sc, history] = await Promise.all([api("GET", `/api/schedules/${enc(id)}`), api("GET", `/api/schedules/${enc(id)}/history?limit=50`)]);
  const outcome = el("p", { id: "schedule-outcome", role: "status" });
  const act = (label, action, method = "POST") => {
    const b = el("button", { type: "button", "data-action": action, disabled: session.role !== "admin" && action !== "trigger" || session.role === "viewer" }, label);
    b.addEventListener("click", async () => {
      if (action === "delete" && !confirm(`Delete schedule ${id}?`)) return;
      try {
        await api(method, action === "delete" ? `/api/schedules/${enc(id)}` : `/api/schedules/${enc(id)}/${action}`);
        if (action === "delete") { location.hash = "#/schedules"; return; }
        route();
      } catch (e) { outcome.textContent = e.message; outcome.className = "error"; }
    });
    return b;
  };
  const fires = el("tbody", { id: "history" }, history.fires.map(f => el("tr", {},
    el("td", { class: "num" }, f.seq), el("td", {}, when(f.scheduled_for)), el("td", {}, f.reason), el("td", {}, f.action),
    el("td", {}, f.job_id ? jobLink(f.job_id) : "–"), el("td", {}, f.outcome ? stateTag(f.outcome) : "–"),
    el("td", { class: "error" }, f.error ? f.error.message : f.message || ""))));
  main.replaceChildren(el("h1", {}, `Schedule ${id}`),
    el("dl", { class: "kv" }, el("dt", {}, "When"), el("dd", { id: "schedule-when" }, triggerWords(sc.trigger, sc.timezone)),
      el("dt", {}, "State"), el("dd", {}, sc.enabled ? "enabled" : "paused"),
      el("dt", {}, "Next run"), el("dd", {}, when(sc.next_run)), el("dt", {}, "Last run"), el("dd", {}, when(sc.last_run)),
      el("dt", {}, "Runs"), el("dd", {}, sc.run_count), el("dt", {}, "Misfire, overlap"), el("dd", {}, `${sc.misfire}, ${sc.overlap}`)),
    el("div", { class: "controls" }, act("Trigger now", "trigger"), sc.enabled ? act("Pause", "pause") : act("Resume", "resume"), act("Delete", "delete", "DELETE")), outcome,
    el("h2", {}, "History"),
    el("table", {}, el("thead", {}, el("tr", {}, ["#", "For", "Why", "Action", "Job", "Outcome", "Note"].map(h => el("th", {}, h)))), fires),
    el("h2", {}, "Edit"), scheduleForm(sc));
  const jobs = new Set(history.fires.map(f => f.job_id).filter(Boolean));
  return ready(batch => {
    if (batch.some(e => e.type === "schedule.fired" && e.data && e.data.schedule_id === id)
      || batch.some(e => jobs.has(e.job_id) && e.data && e.data.state && !ACTIVE.has(e.data.state) && e.data.state !== "queued")) route();
  });
}

async function queuesView(main) {
  const body = el("tbody", { id: "queues" });
  const draw = list => body.replaceChildren(...list.queues.map(q => {
    const action = q.paused ? "resume" : "pause";
    const b = el("button", { type: "button", "data-queue": q.name, "data-action": action, disabled: session.role === "viewer" }, q.paused ? "Resume" : "Pause");
    b.addEventListener("click", async () => {
      b.disabled = true;
      try { await api("POST", `/api/queues/${enc(q.name)}/${action}`); } catch (e) { toast(e.message, true); }
      draw(await api("GET", "/api/queues"));
    });
    return el("tr", { "data-queue": q.name }, el("td", {}, el("a", { href: `#/jobs?queue=${enc(q.name)}` }, q.name)),
      el("td", { class: "num" }, q.concurrency ?? "–"), el("td", { class: "num" }, q.running),
      ["queued", "scheduled", "failed", "completed"].map(s => el("td", { class: "num" }, q.counts[s] || 0)),
      el("td", { "data-paused": String(q.paused), "data-held": q.held || "" },
        q.paused ? "paused" : q.held ? `held: ${q.held}` : q.heavy ? "running (heavy)" : "running"), el("td", {}, b));
  }));
  // Concurrency limits across queues, with the slots each holds now.
  const limitsBody = el("tbody", { id: "concurrency-limits" });
  const drawLimits = list => limitsBody.replaceChildren(...list.map(l => el("tr", { "data-limit": l.name },
    el("td", {}, l.label ? el("a", { href: `#/jobs?label=${enc(l.label)}` }, l.name) : el("a", { href: `#/jobs?kind=${enc(l.kind)}` }, l.name)),
    el("td", { class: "num", "data-held": String(l.held) }, `${l.held} / ${l.max}`),
    el("td", {}, l.held >= l.max ? "full: its other jobs wait" : ""))));
  const ready = listenSoon();
  const [queues, resources] = await Promise.all([api("GET", "/api/queues"), api("GET", "/api/resources")]);
  draw(queues);
  const limited = resources.concurrency_limits.length > 0;
  drawLimits(resources.concurrency_limits);
  main.replaceChildren(el("h1", {}, "Queues"),
    el("table", {}, el("thead", {}, el("tr", {}, ["Queue", "Concurrency", "Running", "Queued", "Scheduled", "Failed", "Completed", "State", ""].map(h => el("th", {}, h)))), body),
    ...(limited ? [el("h2", {}, "Concurrency limits"),
      el("table", {}, el("thead", {}, el("tr", {}, ["Limit", "Running", ""].map(h => el("th", {}, h)))), limitsBody)] : []));
  const moves = ["job.started", "job.completed", "job.failed", "job.cancelled", "job.crashed", "job.retrying", "job.deleted"];
  return ready(async batch => {
    // A heavy queue's hold begins with a resource alert and ends with its clearing.
    if (batch.some(e => ["queue.paused", "queue.resumed", "resource.alert", "resource.cleared"].includes(e.type))) draw(await api("GET", "/api/queues"));
    if (limited && batch.some(e => moves.includes(e.type))) drawLimits((await api("GET", "/api/resources")).concurrency_limits);
  });
}

async function serversView(main) {
  const ready = listenSoon();
  const [list, remote] = await Promise.all([api("GET", "/api/servers"), api("GET", "/api/workers")]);
  const age = t => t ? duration(Date.now() - Date.parse(t)) : "–";
  // Remote workers connected to this server, with the jobs they run now.
  const workers = el("tbody", { id: "workers" });
  const drawWorkers = r => workers.replaceChildren(...(r.workers.length === 0
    ? [el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No remote worker is connected to this server."))]
    : r.workers.map(w => el("tr", { "data-worker": w.id },
        el("td", {}, w.name), el("td", { class: "muted" }, w.id), el("td", {}, w.kinds.join(", ")), el("td", {}, w.queues.join(", ")),
        el("td", { class: "num" }, `${w.running.length} / ${w.slots}`),
        el("td", {}, ...w.running.slice(0, 20).flatMap((id, i) => [i ? ", " : "", el("a", { href: `#/jobs/${enc(id)}` }, id)]))))));
  drawWorkers(remote);
  main.replaceChildren(el("h1", {}, "Servers"),
    el("table", {}, el("thead", {}, el("tr", {}, ["Server", "Host", "PID", "Started", "Heartbeat", "Workers", "Queues"].map(h => el("th", {}, h)))),
      el("tbody", { id: "servers" }, list.servers.map(sv => el("tr", { "data-server": sv.id, class: sv.stopped_at ? "muted" : "" },
        el("td", {}, sv.id), el("td", {}, sv.host), el("td", { class: "num" }, sv.pid), el("td", {}, when(sv.started_at)),
        el("td", {}, sv.stopped_at ? "stopped" : `${age(sv.heartbeat_at)} ago`), el("td", { class: "num" }, sv.workers),
        el("td", {}, Array.isArray(sv.queues) ? sv.queues.map(q => q.name || q).join(", ") : ""))))),
    el("h2", {}, "Remote workers"),
    el("table", {}, el("thead", {}, el("tr", {}, ["Worker", "Id", "Kinds", "Queues", "Running", "Jobs"].map(h => el("th", {}, h)))), workers));
  // Workers come and go without events: look again every few seconds and when jobs
  // start or end.
  let looking = false;
  const look = async () => {
    if (looking || !workers.isConnected) return;
    looking = true;
    try { drawWorkers(await api("GET", "/api/workers")); } catch { /* the next look tries again */ } finally { looking = false; }
  };
  const timer = setInterval(() => { if (!workers.isConnected) clearInterval(timer); else look(); }, 3000);
  return ready(batch => {
    if (batch.some(e => e.type === "server.up" || e.type === "server.down")) route();
    else if (batch.some(e => ["job.started", "job.completed", "job.failed", "job.cancelled", "job.crashed"].includes(e.type))) look();
  });
}

async function pipelinesView(main) {
  const list = await api("GET", "/api/pipelines");
  const result = el("p", { id: "pipeline-result", role: "status" });
  main.replaceChildren(el("h1", {}, "Pipelines"),
    list.pipelines.length === 0 ? el("p", { class: "muted" }, "No pipeline is stored.") :
    el("table", {}, el("thead", {}, el("tr", {}, ["Pipeline", "Steps", "Queue", ""].map(h => el("th", {}, h)))),
      el("tbody", { id: "pipelines" }, list.pipelines.map(p => {
        const run = el("button", { type: "button", "data-run": p.id, disabled: session.role === "viewer" }, "Run");
        run.addEventListener("click", async () => {
          if (!confirm(`Run pipeline ${p.id}?`)) return;
          try { const j = await api("POST", "/api/jobs", { kind: "pipeline", pipeline: p.id }); location.hash = `#/jobs/${enc(j.id)}`; }
          catch (e) { result.textContent = e.message; result.className = "error"; }
        });
        return el("tr", { "data-pipeline": p.id }, el("td", {}, p.id), el("td", {}, (p.steps || []).map(st => st.name).join(" → ")),
          el("td", {}, p.queue || "default"), el("td", {}, run));
      }))), result);
}

// The live inspector: every event as it arrives, filtered by type and job, with the
// lag between its time and its arrival. Pausing the view keeps the stream.
async function eventsView(main) {
  const rows = el("tbody", { id: "event-rows" });
  const type = el("input", { id: "event-type", placeholder: "type, e.g. job.failed", "aria-label": "type" });
  const job = el("input", { id: "event-job", placeholder: "job id", "aria-label": "job" });
  const pause = el("button", { type: "button", id: "event-pause" }, "Pause view");
  const count = el("span", { class: "muted", id: "event-count" });
  let paused = false, held = [], shown = 0;
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.textContent = paused ? "Resume view" : "Pause view";
    if (!paused) { add(held); held = []; }
  });
  // The newest KEEP rows stay; of a batch larger than that (a burst, or a tab that was in
  // the background) only its newest are drawn.
  const KEEP = 500;
  const add = batch => {
    const now = Date.now();
    const t = type.value.trim(), j = job.value.trim();
    const matched = batch.filter(e => (!t || e.type.includes(t)) && (!j || e.job_id === j));
    shown += matched.length;
    const drawn = document.createDocumentFragment();
    for (const e of matched.slice(-KEEP).reverse()) {
      drawn.append(el("tr", { "data-event": e.id }, el("td", { class: "num" }, e.id), el("td", {}, e.type),
        el("td", {}, e.job_id ? jobLink(e.job_id) : "–"), el("td", {}, when(e.at)),
        el("td", { class: "num" }, `${Math.max(0, now - Date.parse(e.at))} ms`), el("td", { class: "hide-narrow" }, summary(e))));
    }
    rows.prepend(drawn);
    while (rows.children.length > KEEP) rows.lastChild.remove();
    count.textContent = `${shown} shown`;
  };
  main.replaceChildren(el("h1", {}, "Events"), el("div", { class: "filters" }, type, job, pause, count),
    el("table", {}, el("thead", {}, el("tr", {}, ["Id", "Type", "Job", "At", "Lag", "Data"].map(h => el("th", {}, h)))), rows));
  return listen(batch => { if (paused) held.push(...batch); else add(batch); });
}

// ---- preferences, keys and toasts -------------------------------------------------

function applyTheme() {
  if (prefs.theme === "system") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = prefs.theme;
}

function setupChrome() {
  const time = el("select", { id: "pref-time", "aria-label": "times" },
    [["local", "local time"], ["utc", "UTC"], ["relative", "relative"]].map(([v, l]) => el("option", { value: v, selected: prefs.time === v }, l)));
  time.addEventListener("change", () => { prefs.time = time.value; localStorage.setItem("baton.time", time.value); route(); });
  const theme = el("select", { id: "pref-theme", "aria-label": "theme" },
    [["system", "system theme"], ["light", "light"], ["dark", "dark"]].map(([v, l]) => el("option", { value: v, selected: prefs.theme === v }, l)));
  theme.addEventListener("change", () => { prefs.theme = theme.value; localStorage.setItem("baton.theme", theme.value); applyTheme(); });
  document.querySelector("header.top").append(time, theme);
  applyTheme();
  // Keys: / searches, j and k move in a list, Enter opens, ? lists them.
  document.addEventListener("keydown", ev => {
    if ((ev.target instanceof Element && ev.target.closest("input, textarea, select")) || ev.metaKey || ev.ctrlKey || ev.altKey) return;
    const rows = [...document.querySelectorAll("main tbody tr")];
    const at = rows.findIndex(r => r.classList.contains("focused"));
    const move = to => {
      if (!rows.length) return;
      rows.forEach(r => r.classList.remove("focused"));
      const row = rows[Math.max(0, Math.min(rows.length - 1, to))];
      row.classList.add("focused");
      row.scrollIntoView({ block: "nearest" });
    };
    if (ev.key === "/") { const q = document.querySelector("main input[name=q], main input"); if (q) { ev.preventDefault(); q.focus(); } }
    else if (ev.key === "j") move(at + 1);
    else if (ev.key === "k") move(at < 0 ? 0 : at - 1);
    else if (ev.key === "Enter" && at >= 0) { const a = rows[at].querySelector("a"); if (a) a.click(); }
    else if (ev.key === "?") toast("Keys: / search, j next row, k previous row, Enter open, ? this help");
  });
  // Toasts for what matters, whatever the page.
  listen(batch => {
    for (const e of batch) {
      if (e.type === "job.failed") toast(`${e.job_id} failed: ${e.data && e.data.error ? e.data.error.message.split("\n")[0] : ""}`, true);
      else if (e.type === "job.completed" && e.data && e.data.ran_ms >= prefs.long) toast(`${e.job_id} completed after ${duration(e.data.ran_ms)}`);
      else if (e.type === "job.crashed") toast(`${e.job_id} crashed: ${e.data && e.data.reason || ""}`, true);
      else if (e.type === "schedule.fired" && e.data && e.data.action && e.data.action !== "created") toast(`schedule ${e.data.schedule_id}: ${e.data.action}${e.data.message ? ` (${e.data.message})` : ""}`);
      else if (e.type === "server.down") toast(`server ${e.data && e.data.server_id || ""} is down`, true);
    }
  });
}

// ---- sign-in -----------------------------------------------------------------------

function signIn(reason) {
  if (stream.source) { stream.source.close(); stream.source = null; }
  const input = el("input", { type: "password", name: "token", autocomplete: "off", placeholder: "token", "aria-label": "token" });
  const form = el("form", { class: "signin", id: "signin" },
    el("h1", {}, "Sign in"),
    el("p", { class: "muted" }, "This Baton asks for a token. It is kept for this tab only."),
    reason ? el("p", { class: "error" }, reason) : null,
    input, el("button", { class: "primary", type: "submit" }, "Sign in"));
  form.addEventListener("submit", ev => {
    ev.preventDefault();
    session.token = input.value.trim();
    sessionStorage.setItem("baton.token", session.token);
    start();
  });
  document.getElementById("main").replaceChildren(form);
  input.focus();
}

async function whoAmI() {
  try {
    const me = await api("GET", "/api/whoami");
    session.role = me.role;
    if (me.dashboard) session.dashboard = me.dashboard;
    document.getElementById("who").textContent = me.auth ? `${me.name} (${me.role})` : "";
    document.body.dataset.role = me.role;
    return true;
  } catch (e) {
    return !(e instanceof ApiError && e.status === 401);
  }
}

let chrome = false;

async function start() {
  if (!chrome) { chrome = true; setupChrome(); }
  if (!(await whoAmI())) return;
  if (!stream.source) {
    // The first stream starts live: the first view reads the API only once the server
    // follows the store for this tab (the stream is open), so that nothing committed
    // between the view's read and the stream's start is missed. Without a stream the
    // page still draws.
    await new Promise(resolve => {
      connect();
      stream.source.addEventListener("open", resolve, { once: true });
      stream.source.addEventListener("error", resolve, { once: true });
    });
  }
  await route();
}

window.addEventListener("hashchange", route);
// After the page's load: a stream opened before it would hold the load event open.
if (document.readyState === "complete") start();
else window.addEventListener("load", start, { once: true });

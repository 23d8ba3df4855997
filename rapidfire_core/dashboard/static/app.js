// The dashboard page: polls the JSON API about once a second and keeps the runs table, the
// metric charts and the command history current. Metrics are fetched incrementally (rows after
// the last row id seen); runs and commands are small and fetched whole. Every text that comes
// from the server is inserted as text (never as HTML).
"use strict";

(() => {
  const { LineChart, formatNumber } = window.RFCharts;
  const TOKEN = new URLSearchParams(location.search).get("token");
  const POLL_MS = 1000;
  const EXPERIMENTS_MS = 5000;
  const PALETTE = [
    "#e4572e", "#2e86ab", "#3bb273", "#7768ae", "#f3a712", "#d1495b",
    "#00a6a6", "#8c5e58", "#4f6d7a", "#c06c84", "#6c8a2e", "#e08dac",
  ];
  // Charts come in this order, then the rest alphabetically, bookkeeping metrics last.
  const METRIC_ORDER = ["loss", "eval_loss", "reward", "learning_rate", "grad_norm"];
  const BOOKKEEPING = /(_runtime|_per_second|flos)$|^epoch$/;
  const HEADLINE = ["loss", "eval_loss", "reward"];
  const CAN = {
    stop: (s) => s === "NEW" || s === "ONGOING",
    resume: (s) => s === "STOPPED",
    delete: (s) => s !== "DELETED",
    clone: (s) => s !== "DELETED",
  };

  const S = {
    exp: null,
    epoch: 0, // bumped when the experiment changes: late answers for the old one are dropped
    lastRow: 0,
    storeId: null, // runs.db's identity: row ids are only comparable within one
    charts: new Map(), // metric name -> LineChart
    runs: [],
    varying: [],
    hidden: new Set(),
    seen: new Set(), // runs seen at least once (a run first seen DELETED starts hidden)
    rowSig: new Map(), // run id -> signature of its rendered row
    headSig: "",
    commandsSig: "",
    pendingByRun: new Map(),
    watch: new Map(), // command id -> {op, run} of commands this page submitted
    flash: null,
    timer: null,
    inFlight: false,
    again: false,
  };

  // ---- small helpers ---------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else el.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;
  const expPath = (rest) => `api/experiments/${enc(S.exp)}/${rest}`;
  const color = (id) => PALETTE[(id - 1) % PALETTE.length];
  const shortName = (knob) => knob.split(".").pop();
  const time = (t) => (t ? new Date(t * 1000).toLocaleTimeString([], { hour12: false }) : "–");

  function knobText(v) {
    if (typeof v === "number") return formatNumber(v);
    if (Array.isArray(v)) return v.map(knobText).join(", ");
    if (v && typeof v === "object") return JSON.stringify(v);
    if (typeof v === "string" && v.includes("/")) return v.split("/").filter(Boolean).pop() || v;
    return String(v);
  }

  async function api(path, options = {}) {
    const headers = {};
    if (TOKEN) headers.Authorization = `Bearer ${TOKEN}`;
    let body;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.json);
    }
    const resp = await fetch(path, { method: options.method || "GET", headers, body, cache: "no-store" });
    let data = null;
    try {
      data = await resp.json();
    } catch (_) {
      data = null;
    }
    if (!resp.ok) {
      const err = new Error((data && data.error) || `${resp.status} ${resp.statusText}`);
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  function toast(text, kind = "info") {
    const el = h("div", { class: `toast ${kind}`, onclick: () => el.remove() }, text);
    $("toasts").appendChild(el);
    setTimeout(() => el.remove(), kind === "error" ? 12000 : 5000);
  }

  // ---- polling ---------------------------------------------------------------------------
  function schedule(ms) {
    clearTimeout(S.timer);
    S.timer = setTimeout(tick, ms);
  }
  const refreshSoon = () => schedule(0);

  async function tick() {
    if (S.inFlight) {
      S.again = true;
      return;
    }
    S.inFlight = true;
    const epoch = S.epoch;
    try {
      if (S.exp) {
        const [runs, commands] = await Promise.all([
          api(expPath("runs")), api(expPath("commands")), pullMetrics(epoch),
        ]);
        if (epoch === S.epoch) {
          showController(runs.controller_alive, null, runs.executors);
          applyCommands(commands.commands);
          applyRuns(runs);
        }
      }
    } catch (err) {
      showController(null, err.message);
    } finally {
      S.inFlight = false;
      // Faster while a command this page sent is in flight: its outcome shows soon after it lands.
      schedule(S.again ? 0 : S.watch.size ? 250 : POLL_MS);
      S.again = false;
    }
  }

  async function pullMetrics(epoch) {
    const dirty = new Set();
    for (;;) {
      const data = await api(expPath(`metrics?after=${S.lastRow}`));
      if (epoch !== S.epoch) return;
      if (S.storeId !== null && data.store_id !== S.storeId) {
        // The experiment was deleted and made again: its row ids start over.
        clearCharts();
        S.storeId = data.store_id;
        dirty.clear();
        continue;
      }
      S.storeId = data.store_id;
      for (const [, runId, step, , , name, value] of data.rows) {
        chart(name).series(runId).add(step, value);
        dirty.add(name);
      }
      S.lastRow = data.last;
      if (!data.more) break;
    }
    for (const name of dirty) S.charts.get(name).render();
    $("charts-empty").hidden = S.charts.size > 0;
  }

  // ---- charts ----------------------------------------------------------------------------
  function metricRank(name) {
    const i = METRIC_ORDER.indexOf(name);
    if (i >= 0) return [0, i, name];
    return [BOOKKEEPING.test(name) ? 2 : 1, 0, name];
  }

  function compareMetrics(a, b) {
    const [ra, rb] = [metricRank(a), metricRank(b)];
    return ra[0] - rb[0] || ra[1] - rb[1] || (ra[2] < rb[2] ? -1 : ra[2] > rb[2] ? 1 : 0);
  }

  function chart(name) {
    let c = S.charts.get(name);
    if (c) return c;
    const style = (id) => ({ color: color(id), label: `#${id}`, hidden: S.hidden.has(id) });
    c = new LineChart($("charts"), name, style);
    S.charts.set(name, c);
    // Keep the cards in metric order (appendChild moves an existing node).
    for (const n of [...S.charts.keys()].sort(compareMetrics)) $("charts").appendChild(S.charts.get(n).card);
    return c;
  }

  function clearCharts() {
    S.lastRow = 0;
    S.charts.clear();
    $("charts").replaceChildren();
    $("charts-empty").hidden = false;
  }

  function renderCharts() {
    for (const c of S.charts.values()) c.render();
  }

  function toggleRun(id) {
    if (S.hidden.has(id)) S.hidden.delete(id);
    else S.hidden.add(id);
    renderCharts();
    renderLegend();
    applyRuns({ runs: S.runs, varying_knobs: S.varying });
  }

  // ---- runs table ------------------------------------------------------------------------
  function knobColumns() {
    if (S.varying.length) return S.varying;
    // One run (or identical ones): show the knobs people sweep most, if present.
    const first = S.runs[0] ? S.runs[0].knobs : {};
    return ["train.learning_rate", "peft.r"].filter((k) => k in first);
  }

  function metricColumns() {
    return HEADLINE.filter((m) => m !== "reward" || S.runs.some((r) => "reward" in r.latest));
  }

  function applyRuns(data) {
    S.runs = data.runs;
    S.varying = data.varying_knobs || [];
    for (const r of S.runs) {
      if (!S.seen.has(r.run_id)) {
        S.seen.add(r.run_id);
        if (r.status === "DELETED") S.hidden.add(r.run_id);
      }
    }
    const knobs = knobColumns();
    const metrics = metricColumns();
    const headSig = JSON.stringify([knobs, metrics]);
    const table = $("runs-table");
    if (headSig !== S.headSig) {
      S.headSig = headSig;
      S.rowSig.clear();
      table.tHead.replaceChildren(h("tr", null,
        h("th", { class: "swatch-col" }), h("th", null, "run"), h("th", null, "status"),
        h("th", null, "progress"),
        metrics.map((m) => h("th", { class: "num" }, m)),
        knobs.map((k) => h("th", { class: "knob", title: k }, shortName(k))),
        h("th", null, "origin"), h("th", { class: "actions-col" }, "actions")));
    }
    const body = table.tBodies[0];
    const keep = new Set();
    S.runs.forEach((run, index) => {
      const id = run.run_id;
      keep.add(id);
      const pending = S.pendingByRun.get(id) || [];
      const sig = JSON.stringify([run, pending, S.hidden.has(id), S.flash === id, index]);
      if (S.rowSig.get(id) === sig) return;
      S.rowSig.set(id, sig);
      const row = runRow(run, knobs, metrics, pending);
      const old = body.querySelector(`tr[data-run="${id}"]`);
      if (old) old.replaceWith(row);
      else body.appendChild(row);
    });
    for (const tr of [...body.rows]) {
      if (!keep.has(Number(tr.dataset.run))) tr.remove();
    }
    if (!S.runs.length && !body.querySelector(".empty-row")) {
      body.appendChild(h("tr", { class: "empty-row" }, h("td", { colspan: 99 }, "No runs yet.")));
    } else if (S.runs.length) {
      body.querySelectorAll(".empty-row").forEach((e) => e.remove());
    }
    renderLegend();
  }

  function runRow(run, knobs, metrics, pending) {
    const id = run.run_id;
    const status = run.status;
    const hidden = S.hidden.has(id);
    const steps = run.max_steps ? `${run.global_step} / ${run.max_steps}` : String(run.global_step);
    const frac = run.max_steps ? Math.min(1, run.global_step / run.max_steps) : null;
    const bar = h("div", { class: "bar" }, h("span"));
    if (frac !== null) bar.firstChild.style.width = `${(frac * 100).toFixed(1)}%`;
    const swatch = h("button", {
      class: `swatch${hidden ? " off" : ""}`, title: hidden ? "show in charts" : "hide in charts",
      "aria-label": `toggle run ${id}`, "aria-pressed": String(!hidden),
    });
    swatch.style.setProperty("--c", color(id));
    const origin = run.parent_run_id
      ? h("span", { class: "origin" }, `clone of #${run.parent_run_id}`,
        h("span", { class: `tag ${run.warm_start ? "warm" : "cold"}` }, run.warm_start ? "warm" : "cold"))
      : h("span", { class: "muted" }, "—");
    const button = (op, label) => h("button", {
      class: `btn small ${op}`, "data-action": op,
      disabled: !CAN[op](status) || pending.includes(op),
      onclick: (ev) => {
        ev.stopPropagation();
        if (op === "clone") openEditor(run);
        else act(op, run);
      },
    }, label);
    const row = h("tr", {
      "data-run": id, "data-status": status,
      class: [hidden ? "hidden-run" : "", S.flash === id ? "flash" : ""].join(" ").trim() || null,
      onclick: () => toggleRun(id),
    },
      h("td", { class: "swatch-col" }, swatch),
      h("td", { class: "run-id" }, h("b", null, `#${id}`), h("span", { class: "muted name" }, run.name)),
      h("td", null, h("span", { class: `status ${status.toLowerCase()}` }, status),
        pending.length ? h("span", { class: "pending" }, `${pending.join(", ")} pending…`) : null,
        run.error ? h("div", { class: "run-error", title: run.error }, run.error.split("\n").pop()) : null),
      h("td", { class: "progress" }, h("div", null, `step ${steps}`,
        h("span", { class: "muted" }, ` · ${run.chunks_done} chunk${run.chunks_done === 1 ? "" : "s"}`),
        run.where ? h("div", { class: "muted where", title: "node/device#executor that trains it" },
          `on ${run.where}`) : null,
        run.resume_from ? h("div", { class: "muted resume-from",
          title: run.resume_from.how === "run_fit" ? "interrupted: run_fit with the same arguments continues it"
            : "stopped: Resume continues it" }, `resumable from chunk ${run.resume_from.chunk + 1}`) : null),
        frac !== null ? bar : null),
      metrics.map((m) => h("td", { class: "num" }, m in run.latest ? formatNumber(run.latest[m]) : "–")),
      knobs.map((k) => h("td", { class: "knob", title: `${k} = ${JSON.stringify(run.knobs[k])}` },
        k in run.knobs ? knobText(run.knobs[k]) : "—")),
      h("td", null, origin),
      h("td", { class: "actions" }, button("stop", "Stop"), button("resume", "Resume"),
        button("delete", "Delete"), button("clone", "Clone")),
    );
    return row;
  }

  function renderLegend() {
    const legend = $("legend");
    legend.replaceChildren(...S.runs.map((run) => {
      const id = run.run_id;
      const summary = S.varying.slice(0, 3).filter((k) => k in run.knobs)
        .map((k) => `${shortName(k)}=${knobText(run.knobs[k])}`).join(" ");
      const chip = h("button", {
        class: `chip${S.hidden.has(id) ? " off" : ""}`, "data-run": id, title: "show / hide in the charts",
        onclick: () => toggleRun(id),
      }, h("i"), `#${id}`, summary ? h("span", { class: "muted" }, ` ${summary}`) : null);
      chip.firstChild.style.background = color(id);
      return chip;
    }));
  }

  // ---- commands --------------------------------------------------------------------------
  function applyCommands(commands) {
    S.pendingByRun = new Map();
    for (const c of commands) {
      if (c.status === "pending" || c.status === "applying") {
        const list = S.pendingByRun.get(c.run_id) || [];
        list.push(c.op);
        S.pendingByRun.set(c.run_id, list);
      }
      const watched = S.watch.get(c.command_id);
      if (watched && (c.status === "applied" || c.status === "failed")) {
        S.watch.delete(c.command_id);
        if (c.status === "applied") toast(`${c.op} run #${c.run_id}: applied`, "ok");
        else toast(`${c.op} run #${c.run_id} failed: ${c.error}`, "error");
      }
    }
    const sig = JSON.stringify(commands);
    if (sig === S.commandsSig) return;
    S.commandsSig = sig;
    const rows = [...commands].reverse().map((c) => h("tr", { "data-command": c.command_id, "data-status": c.status },
      h("td", null, c.command_id), h("td", null, h("b", null, c.op)), h("td", null, `#${c.run_id}`),
      h("td", null, h("span", { class: `source ${c.source}` }, c.source)),
      h("td", null, h("span", { class: `cstatus ${c.status}` }, c.status)),
      h("td", null, time(c.created_at)), h("td", null, time(c.applied_at)),
      h("td", { class: "result" }, commandResult(c))));
    $("commands-table").tBodies[0].replaceChildren(...(rows.length ? rows
      : [h("tr", { class: "empty-row" }, h("td", { colspan: 8 }, "No commands yet."))]));
  }

  function commandResult(c) {
    if (c.error) return h("span", { class: "error-text", title: c.error }, c.error);
    const bits = [];
    if (c.op === "clone") {
      const changes = Object.entries((c.payload || {}).changes || {})
        .map(([k, v]) => `${shortName(k)}=${knobText(v)}`).join(" ");
      if (c.result && c.result.run_id) bits.push(`→ run #${c.result.run_id}`);
      if (changes) bits.push(changes);
      if (c.payload && c.payload.warm_start) bits.push("warm");
    }
    return bits.join(" · ") || (c.status === "applied" ? "ok" : "");
  }

  async function act(op, run) {
    const id = run.run_id;
    if (op === "delete" && !confirm(`Delete run #${id}? Training ends and its state is freed; its metrics stay.`)) return;
    try {
      const c = await api(expPath("commands"), { method: "POST", json: { op, run_id: id, payload: {} } });
      S.watch.set(c.command_id, { op, run: id });
      toast(c.controller_alive ? `${op} run #${id}: sent, applied at its next step`
        : `${op} run #${id}: queued. No process is training this experiment now; it is applied when one does.`);
    } catch (err) {
      toast(`${op} run #${id}: ${err.message}`, "error");
    }
    refreshSoon();
  }

  function showController(alive, error, executors) {
    const el = $("controller");
    const text = $("controller-text");
    if (error) {
      el.dataset.alive = "error";
      text.textContent = `dashboard server unreachable: ${error}`;
      return;
    }
    el.dataset.alive = alive ? "yes" : "no";
    text.textContent = alive ? "training process live" : "no training process";
    if (executors && executors.length) {  // executors on Ray: each one's busy share
      text.textContent += " · " + executors.map((e) => e.alive
        ? `executor ${e.index} ${Math.round(100 * e.busy_share)}% busy` : `executor ${e.index} lost`).join(", ");
    }
    el.title = alive
      ? "A process is training this experiment (its heartbeat is fresh): commands apply at the next optimizer step."
      : "No process is training this experiment now: commands stay pending until one runs it.";
  }

  // ---- clone editor ----------------------------------------------------------------------
  let E = null; // the open editor: {run, fields: [...], extra: [...], polling}

  function jsonType(v) {
    if (v === null || typeof v === "object") return "json";
    return typeof v; // number, boolean, string
  }

  // A value typed into a free-form box: JSON when it parses (1e-4, 16, true, [..]), else the text.
  function looseValue(text) {
    try {
      return JSON.parse(text);
    } catch (_) {
      return text;
    }
  }

  function knobField(name, value) {
    const type = jsonType(value);
    let input;
    if (type === "boolean") {
      input = h("input", { type: "checkbox", name });
      input.checked = value;
    } else {
      input = h("input", { type: "text", name, spellcheck: "false", inputmode: type === "number" ? "decimal" : null });
      input.value = type === "json" ? JSON.stringify(value) : String(value);
    }
    const row = h("div", { class: "knob-row", "data-knob": name },
      h("label", { class: "knob-name", title: name }, name), input, h("span", { class: "knob-type" }, type));
    const read = () => {
      if (type === "boolean") return { value: input.checked };
      const text = input.value.trim();
      if (type === "number") {
        const n = Number(text);
        return text !== "" && Number.isFinite(n) ? { value: n } : { error: `${name}: expected a number, got "${text}"` };
      }
      if (type === "json") {
        try {
          return { value: JSON.parse(text) };
        } catch (_) {
          return { error: `${name}: expected JSON (e.g. ["q_proj", "v_proj"] or null), got ${text}` };
        }
      }
      return { value: input.value };
    };
    const mark = () => {
      const r = read();
      row.classList.toggle("changed", r.error !== undefined || JSON.stringify(r.value) !== JSON.stringify(value));
    };
    input.addEventListener("input", mark);
    input.addEventListener("change", mark);
    return { name, original: value, row, read };
  }

  function extraField() {
    const nameInput = h("input", { type: "text", class: "extra-name", placeholder: "knob, e.g. train.weight_decay", spellcheck: "false" });
    const valueInput = h("input", { type: "text", class: "extra-value", placeholder: "value (JSON or text)", spellcheck: "false" });
    const field = { row: null };
    const remove = h("button", {
      type: "button", class: "icon", "aria-label": "remove",
      onclick: () => { field.row.remove(); E.extra = E.extra.filter((f) => f !== field); },
    }, "×");
    field.row = h("div", { class: "knob-row extra changed" }, nameInput, valueInput, remove);
    field.read = () => {
      const name = nameInput.value.trim();
      const text = valueInput.value.trim();
      if (!name && !text) return {};
      if (!name) return { error: `a value "${text}" has no knob name` };
      return { name, value: looseValue(text) };
    };
    return field;
  }

  function openEditor(run) {
    const varying = S.varying.filter((k) => k in run.knobs);
    const names = [...varying, ...Object.keys(run.knobs).filter((k) => !varying.includes(k))];
    E = { run, fields: names.map((k) => knobField(k, run.knobs[k])), extra: [], polling: null };
    $("editor-title").textContent = `Clone run #${run.run_id}`;
    $("warm-label").textContent = `Warm start from run #${run.run_id}'s current weights`;
    $("warm-start").checked = false;
    $("knob-rows").replaceChildren(...E.fields.map((f) => f.row));
    setEditorError(null);
    setEditorStatus(null);
    $("editor-submit").disabled = false;
    $("editor").hidden = false;
    const first = $("knob-rows").querySelector("input");
    if (first) first.focus();
  }

  function closeEditor() {
    E = null;
    $("editor").hidden = true;
  }

  function setEditorError(text) {
    const el = $("editor-error");
    el.hidden = !text;
    el.textContent = text || "";
  }

  function setEditorStatus(text) {
    const el = $("editor-status");
    el.hidden = !text;
    el.textContent = text || "";
  }

  async function submitClone(ev) {
    ev.preventDefault();
    if (!E) return;
    const editor = E;
    const changes = {};
    const errors = [];
    for (const f of editor.fields) {
      const r = f.read();
      if (r.error) errors.push(r.error);
      else if (JSON.stringify(r.value) !== JSON.stringify(f.original)) changes[f.name] = r.value;
    }
    for (const f of editor.extra) {
      const r = f.read();
      if (r.error) errors.push(r.error);
      else if (r.name) changes[r.name] = r.value;
    }
    if (errors.length) return setEditorError(errors.join("\n"));
    setEditorError(null);
    $("editor-submit").disabled = true;
    const payload = { changes, warm_start: $("warm-start").checked };
    let command;
    try {
      command = await api(expPath("commands"), { method: "POST", json: { op: "clone", run_id: editor.run.run_id, payload } });
    } catch (err) {
      $("editor-submit").disabled = false;
      return setEditorError(err.message);
    }
    setEditorStatus(command.controller_alive
      ? `Command #${command.command_id} sent; waiting for the training process to apply it…`
      : `Command #${command.command_id} queued. No process is training this experiment now; the clone is made when one does.`);
    refreshSoon();
    for (;;) {
      await new Promise((r) => setTimeout(r, 400));
      if (E !== editor) return; // closed: the history still shows the outcome
      try {
        command = await api(expPath(`commands/${command.command_id}`));
      } catch (err) {
        setEditorStatus(`cannot read command #${command.command_id}: ${err.message}`);
        continue;
      }
      if (command.status === "failed") {
        setEditorStatus(null);
        setEditorError(command.error);
        $("editor-submit").disabled = false;
        return;
      }
      if (command.status === "applied") {
        const newId = command.result && command.result.run_id;
        closeEditor();
        S.flash = newId;
        setTimeout(() => { if (S.flash === newId) { S.flash = null; refreshSoon(); } }, 4000);
        toast(`Run #${newId} created: a clone of #${editor.run.run_id}`, "ok");
        refreshSoon();
        return;
      }
    }
  }

  // ---- experiments -----------------------------------------------------------------------
  function hashExperiment() {
    const m = location.hash.match(/exp=([^&]+)/);
    return m ? decodeURIComponent(m[1]) : null;
  }

  function selectExperiment(name) {
    if (name === S.exp) return;
    S.exp = name;
    S.epoch += 1;
    S.storeId = null;
    clearCharts();
    S.runs = [];
    S.hidden.clear();
    S.seen.clear();
    S.rowSig.clear();
    S.headSig = "";
    S.commandsSig = "";
    S.watch.clear();
    $("runs-table").tBodies[0].replaceChildren();
    $("experiment-select").value = name;
    document.title = `${name} · RapidFire dashboard`;
    refreshSoon();
  }

  async function loadExperiments() {
    try {
      const data = await api("api/experiments");
      const select = $("experiment-select");
      const names = data.experiments.map((e) => e.name);
      if (JSON.stringify(names) !== select.dataset.names) {
        select.dataset.names = JSON.stringify(names);
        select.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
      }
      const empty = $("empty");
      empty.hidden = names.length > 0;
      document.querySelectorAll("main > .card").forEach((c) => { c.hidden = names.length === 0; });
      if (!names.length) {
        empty.textContent = `No experiments under ${data.root} yet. Start one with Experiment(...).run_fit(...): it appears here by itself.`;
        showController(false);
      }
      const wanted = hashExperiment();
      const pick = names.includes(wanted) ? wanted : names.includes(S.exp) ? S.exp : names[0];
      if (pick) {
        selectExperiment(pick);
        select.value = pick;
      }
    } catch (err) {
      showController(null, err.message);
    }
    setTimeout(loadExperiments, EXPERIMENTS_MS);
  }

  // ---- wiring ----------------------------------------------------------------------------
  $("experiment-select").addEventListener("change", (ev) => {
    location.hash = `exp=${enc(ev.target.value)}`;
  });
  window.addEventListener("hashchange", () => {
    const name = hashExperiment();
    if (name) selectExperiment(name);
  });
  $("clone-form").addEventListener("submit", submitClone);
  $("editor-close").addEventListener("click", closeEditor);
  $("editor-cancel").addEventListener("click", closeEditor);
  $("editor").addEventListener("click", (ev) => { if (ev.target === $("editor")) closeEditor(); });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && E) closeEditor(); });
  $("add-knob").addEventListener("click", () => {
    if (!E) return;
    const f = extraField();
    E.extra.push(f);
    $("knob-rows").appendChild(f.row);
    f.row.querySelector("input").focus();
  });
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(renderCharts, 150);
  });

  loadExperiments();
})();

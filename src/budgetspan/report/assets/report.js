// budgetspan HTML report: draws the summary, the runs table and one page per run from the JSON
// data block. Span text is only ever set with textContent (never parsed as markup).
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const STR = data.strings;
  const S = (i) => (i === null || i === undefined || i < 0 ? "" : STR[i]);
  const PHASES = ["context_assembly", "model_decision", "tool_execution", "verification", "approval", "final_response", "other"];
  const COLORS = { context_assembly: "#6b9bd1", model_decision: "#2f6fde", tool_execution: "#8e6bd1",
    verification: "#1f8a4c", approval: "#d19a2f", final_response: "#4fb0a5", other: "#9aa3b2" };
  const PAGE = 100;
  const app = document.getElementById("app");
  const SVGNS = "http://www.w3.org/2000/svg";

  // runs: [id, wf, outcome, start_ms, wall_s, cost, score, rework, rework_kinds, reason, explanation, profile, late, steps, timeline]
  const runs = data.runs.map((r) => ({
    id: r[0], workflow: S(r[1]), outcome: S(r[2]), start_ms: r[3], wall_s: r[4], cost: r[5], score: r[6],
    rework: r[7], reworkKinds: S(r[8]), reason: S(r[9]), explanation: r[10], profile: S(r[11]), late: r[12],
    steps: r[13], timeline: r[14],
  }));
  const byId = new Map(runs.map((r) => [r.id, r]));

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") node.textContent = String(v);
      else node.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }
  const money = (x) => (x === null || x === undefined ? "n/a" : x === 0 ? "$0" : Math.abs(x) >= 1 ? "$" + x.toFixed(2) : "$" + x.toFixed(4));
  const secs = (x) => (x === null || x === undefined ? "n/a" : Math.abs(x) < 1 ? (x * 1000).toFixed(0) + " ms" : x.toFixed(2) + " s");
  const pct = (x) => (x === null || x === undefined ? "n/a" : (x * 100).toFixed(0) + "%");
  const badge = (o) => el("span", { class: "badge " + o, text: o });
  const runLink = (id) => el("a", { href: "#run/" + encodeURIComponent(id), text: id.slice(0, 12) });

  function table(headers, rows, numeric) {
    const t = el("table");
    const head = el("tr");
    headers.forEach((h, i) => head.appendChild(el("th", { class: numeric && numeric[i] ? "num" : null, text: h })));
    t.appendChild(el("thead", null, head));
    const body = el("tbody");
    for (const row of rows) {
      const tr = el("tr");
      row.forEach((cell, i) => {
        const td = el("td", { class: numeric && numeric[i] ? "num" : null });
        if (cell instanceof Node) td.appendChild(cell); else td.textContent = cell === null || cell === undefined ? "" : String(cell);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    }
    t.appendChild(body);
    return t;
  }

  // A horizontal bar chart: rows of [label, value, color, whisker low, whisker high].
  function barChart(title, rows, fmt) {
    const width = 560, label = 200, rowH = 22, h = rows.length * rowH + 28;
    const finite = rows.flatMap((r) => [r[1], r[4]]).filter((v) => v !== null && v !== undefined && isFinite(v));
    const max = Math.max(...finite, 1e-12);
    const s = svg("svg", { width, height: h, role: "img", "aria-label": title });
    s.appendChild(svg("text", { x: 0, y: 14, "font-weight": 600 }, title));
    rows.forEach((r, i) => {
      const y = 24 + i * rowH;
      s.appendChild(svg("text", { x: 0, y: y + 14 }, r[0]));
      const w = r[1] === null ? 0 : ((width - label - 90) * r[1]) / max;
      s.appendChild(svg("rect", { x: label, y: y + 3, width: Math.max(w, 0), height: rowH - 8, fill: r[2] || "#2f6fde" }));
      let end = label + w;
      if (r[3] !== null && r[3] !== undefined && r[4] !== null && r[4] !== undefined) {
        const x1 = label + ((width - label - 90) * r[3]) / max, x2 = label + ((width - label - 90) * Math.min(r[4], max)) / max;
        s.appendChild(svg("line", { x1, x2, y1: y + rowH / 2, y2: y + rowH / 2, stroke: "#1d2330", "stroke-width": 1.5 }));
        end = Math.max(end, x2);
      }
      s.appendChild(svg("text", { x: end + 6, y: y + 14 }, fmt(r[1])));
    });
    return s;
  }

  function summary() {
    app.replaceChildren();
    app.appendChild(el("p", { class: "muted", text: `${data.spans.toLocaleString()} spans, ${runs.length.toLocaleString()} runs, ${data.workflows.length} workflow(s). budgetspan ${data.version}.` }));
    if (data.dropped_runs) app.appendChild(el("p", { class: "muted", text: `${data.dropped_runs} more runs were read but not kept.` }));
    for (const wf of data.workflows) {
      app.appendChild(el("h2", { text: "Workflow " + wf.name }));
      const outcomes = Object.entries(wf.outcomes).map(([o, n]) => `${n} ${o}`).join(", ");
      const cards = el("div", { class: "cards" });
      for (const [k, v] of [["runs", String(wf.runs)], ["outcomes", outcomes], ["total cost", money(wf.cost)],
        ["cost per successful run", money(wf.cost_per_success)], ["retries", String(wf.retries)]]) {
        cards.appendChild(el("div", { class: "card" }, el("div", { class: "v", text: v }), el("div", { class: "k", text: k })));
      }
      app.appendChild(cards);
      app.appendChild(el("h3", { text: "Phase breakdown" }));
      const phases = wf.phases.filter((p) => p[1] > 0 || p[2] > 0);
      const side = el("div", { class: "side" });
      side.appendChild(barChart("Time by phase", phases.map((p) => [p[0], p[1], COLORS[p[0]]]), secs));
      side.appendChild(barChart("Cost by phase", phases.map((p) => [p[0], p[2], COLORS[p[0]]]), money));
      app.appendChild(side);
      routing(wf.name);
      app.appendChild(el("p", null, el("a", { href: "#runs/" + encodeURIComponent(wf.name), text: `All ${wf.runs} runs of ${wf.name} →` })));
    }
  }

  // routes: [wf, step, model, runs, success, lo, hi, retries/run, fallbacks, rework/run, $/call, $/success, ci lo, ci hi, p50, p95, score]
  function routing(wf) {
    const routes = data.routing.routes.filter((r) => r[0] === wf);
    if (!routes.length) return;
    app.appendChild(el("h3", { text: "Routing: cost per successful run by step and model" }));
    app.appendChild(table(
      ["step", "model", "runs", "success", "retries/run", "fallbacks", "rework/run", "$/call", "$/success", "95% interval", "p50", "p95"],
      routes.map((r) => [r[1], r[2], r[3], `${pct(r[4])} (${pct(r[5])}–${pct(r[6])})`, r[7].toFixed(2), r[8], r[9].toFixed(2),
        money(r[10]), money(r[11]), r[12] === null ? "n/a" : `${money(r[12])}–${r[13] === null ? "∞" : money(r[13])}`, secs(r[14]), secs(r[15])]),
      [false, false, true, true, true, true, true, true, true, true, true, true]));
    app.appendChild(barChart("Cost per successful run (95% interval)", routes.map((r) => [`${r[1]} / ${r[2]}`, r[11], "#2f6fde", r[12], r[13]]), money));
    for (const v of data.routing.verdicts.filter((v) => v[0] === wf)) {
      app.appendChild(el("div", { class: "verdict" }, el("b", { text: "Step " + v[1] + ": " }), v[2]));
    }
  }

  function runsPage(wfFilter, page) {
    app.replaceChildren();
    app.appendChild(el("h2", { text: "Runs" + (wfFilter ? " of " + wfFilter : "") }));
    const outcomes = [...new Set(runs.map((r) => r.outcome))].sort();
    const sel = el("select", { id: "outcome-filter" }, el("option", { value: "", text: "all outcomes" }), ...outcomes.map((o) => el("option", { value: o, text: o })));
    const controls = el("div", { class: "controls" }, el("label", { text: "Outcome " }), sel);
    app.appendChild(controls);
    const holder = el("div");
    app.appendChild(holder);
    const draw = () => {
      const chosen = runs.filter((r) => (!wfFilter || r.workflow === wfFilter) && (!sel.value || r.outcome === sel.value));
      const pages = Math.max(1, Math.ceil(chosen.length / PAGE));
      page = Math.min(Math.max(0, page), pages - 1);
      const rows = chosen.slice(page * PAGE, page * PAGE + PAGE).map((r) => [runLink(r.id), r.workflow, badge(r.outcome),
        secs(r.start_ms / 1000), secs(r.wall_s), money(r.cost), r.score === null ? "" : r.score, r.rework || "", r.explanation || ""]);
      const pager = el("div", { class: "controls" });
      const prev = el("button", { text: "← previous" }), next = el("button", { text: "next →" });
      prev.disabled = page === 0; next.disabled = page >= pages - 1;
      prev.onclick = () => { page -= 1; draw(); }; next.onclick = () => { page += 1; draw(); };
      pager.append(prev, el("span", { text: `page ${page + 1} of ${pages} (${chosen.length} runs)` }), next);
      holder.replaceChildren(table(["run", "workflow", "outcome", "start", "time", "cost", "score", "rework", "why it stopped"], rows,
        [false, false, false, true, true, true, true, true, false]), pager);
    };
    sel.onchange = () => { page = 0; draw(); };
    draw();
  }

  // timeline items: [kind, name, phase, step, start_ms, dur_ms, cost, error, model, retries, fallback, detail]
  function timeline(r) {
    const items = r.timeline.map((t) => ({ kind: S(t[0]), name: S(t[1]), phase: S(t[2]), step: S(t[3]), start: t[4], dur: t[5],
      cost: t[6], error: t[7], model: S(t[8]), retries: t[9], fallback: S(t[10]), detail: S(t[11]),
      input: t[12] || "", output: t[13] || "" }));
    const total = Math.max(r.wall_s * 1000, ...items.map((i) => i.start + i.dur), 1);
    const order = [...new Set(items.map((i) => i.phase))].sort((a, b) => PHASES.indexOf(a) - PHASES.indexOf(b));
    const t = el("table", { class: "tl" });
    t.appendChild(el("tr", null, ...["what", "step", "model / detail", "start", "time", "cost", "", ""].map((h) => el("th", { text: h }))));
    for (const phase of order) {
      t.appendChild(el("tr", { class: "phase" }, el("td", { colspan: 8, text: phase })));
      for (const i of items.filter((x) => x.phase === phase)) {
        const bar = svg("svg", { width: 320, height: 12 });
        bar.appendChild(svg("rect", { x: (320 * i.start) / total, y: 2, width: Math.max(1, (320 * i.dur) / total), height: 8,
          fill: i.error ? "#c0392b" : COLORS[i.phase] || "#9aa3b2" }));
        const notes = [i.model, i.detail, i.retries ? `${i.retries} retr${i.retries === 1 ? "y" : "ies"}` : "", i.fallback ? "fallback from " + i.fallback : ""].filter(Boolean).join("; ");
        const what = el("td", { text: (i.kind === "phase" ? "▸ " : "") + i.name });
        if (i.input || i.output) { // captured content only (OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT)
          const box = el("details", null, el("summary", { text: "content" }));
          if (i.input) box.append(el("div", { class: "muted", text: "input" }), el("pre", { text: i.input }));
          if (i.output) box.append(el("div", { class: "muted", text: "output" }), el("pre", { text: i.output }));
          what.appendChild(box);
        }
        t.appendChild(el("tr", { class: i.error ? "err" : null }, what,
          el("td", { text: i.kind === "phase" ? "" : i.step }), el("td", { text: notes }), el("td", { class: "num", text: secs(i.start / 1000) }),
          el("td", { class: "num", text: secs(i.dur / 1000) }), el("td", { class: "num", text: i.cost === null ? "" : money(i.cost) }),
          el("td", null, bar), el("td", { text: i.kind })));
      }
    }
    return t;
  }

  function runPage(id) {
    app.replaceChildren();
    const r = byId.get(id);
    if (!r) { app.appendChild(el("p", { text: "No run " + id + " in this report." })); return; }
    app.appendChild(el("h2", null, "Run ", el("code", { text: r.id }), " ", badge(r.outcome)));
    app.appendChild(el("p", null, el("a", { href: "#runs/" + encodeURIComponent(r.workflow), text: "← runs of " + r.workflow })));
    const facts = [["workflow", r.workflow], ["time", secs(r.wall_s)], ["cost", money(r.cost)]];
    if (r.profile) facts.push(["budget profile", r.profile]);
    if (r.score !== null) facts.push(["verifier score", String(r.score)]);
    if (r.rework) facts.push(["rework", `${r.rework}${r.reworkKinds ? " (" + r.reworkKinds + ")" : ""}`]);
    const cards = el("div", { class: "cards" });
    for (const [k, v] of facts) cards.appendChild(el("div", { class: "card" }, el("div", { class: "v", text: v }), el("div", { class: "k", text: k })));
    app.appendChild(cards);
    if (r.late) app.appendChild(el("p", { class: "muted", text: "Outcome, score or rework recorded after the run ended (a review or an approval)." }));
    if (r.explanation || r.reason) app.appendChild(el("div", { class: "explain" }, el("b", { text: "Why it stopped: " }), r.explanation || r.reason));
    const side = el("div", { class: "side" });
    if (r.steps.length) {
      const box = el("div", null, el("h3", { text: "Cost per step" }),
        table(["step", "model", "calls", "retries", "fallbacks", "cost"], r.steps.map((s) => [S(s[0]), S(s[1]), s[3], s[4], s[5], money(s[2])]),
          [false, false, true, true, true, true]));
      side.appendChild(box);
    }
    side.appendChild(el("div", null, el("h3", { text: "Final outcome" }), el("p", null, badge(r.outcome),
      r.outcome === "success" ? " The run succeeded." : r.outcome === "escalated" ? " Handed to a human." : "")));
    app.appendChild(side);
    app.appendChild(el("h3", { text: "Timeline by phase" }));
    if (r.timeline) app.appendChild(timeline(r));
    else app.appendChild(el("p", { class: "muted", text: "Timeline not kept for this run (the report keeps the first runs' timelines; see --html-max-timelines)." }));
  }

  function route() {
    const t0 = performance.now();
    const h = decodeURIComponent(location.hash.slice(1));
    if (h.startsWith("run/")) runPage(h.slice(4));
    else if (h === "runs") runsPage("", 0);
    else if (h.startsWith("runs/")) runsPage(h.slice(5), 0);
    else summary();
    window.scrollTo(0, 0);
    window.budgetspanViewMs = performance.now() - t0; // for the benchmark
    document.body.setAttribute("data-view", location.hash); // what is shown (tests wait for it)
  }
  window.addEventListener("hashchange", route);
  route();
  window.budgetspanRenderedMs = performance.now(); // for tests and the benchmark
  document.body.setAttribute("data-ready", "1");
})();

/*
 * procman progress.js: a progress bar with its ETA, from a status dict's `progress`
 * ({done, total, fraction, message, updated_at, eta_seconds} or null).
 *
 *   ProcmanProgress.update(node, progress, running);  // fills (or empties) node
 *   ProcmanProgress.tick();                           // every second: ETAs count down
 *   ProcmanProgress.describe(progress, running);      // {percent, counts, eta, message}
 *
 * Used by the dashboard and by pages of the app (the example's evaluation pages).
 * Text goes through textContent only.
 */
(function (root) {
  "use strict";

  const nodes = new Set();

  function fmtEta(seconds) {
    if (seconds == null || !Number.isFinite(seconds)) return "";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
    const h = Math.floor(s / 3600);
    return `${h} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  }

  function fmtNumber(n) {
    if (n == null) return "";
    return Number.isInteger(n) ? n.toLocaleString() : Number(n).toLocaleString(undefined, { maximumFractionDigits: 2 });
  }

  /** What to show: the ETA counts down from the time of the report while the run goes on. */
  function describe(progress, running) {
    if (!progress || typeof progress !== "object") return null;
    const fraction = typeof progress.fraction === "number" ? Math.max(0, Math.min(1, progress.fraction)) : null;
    const counts = progress.total != null ? `${fmtNumber(progress.done)} / ${fmtNumber(progress.total)}` : fmtNumber(progress.done);
    let eta = "";
    if (running && typeof progress.eta_seconds === "number") {
      const at = Date.parse(progress.updated_at || "");
      const since = Number.isNaN(at) ? 0 : (Date.now() - at) / 1000;
      const left = progress.eta_seconds - Math.max(0, since);
      eta = left > 0 ? `ETA ${fmtEta(left)}` : progress.eta_seconds > 0 ? "ETA any moment" : "";
    }
    return {
      fraction,
      percent: fraction == null ? null : Math.floor(fraction * 100),
      counts,
      eta,
      message: progress.message || "",
    };
  }

  function part(node, cls, tag) {
    let child = node.querySelector(`:scope > .${cls}`);
    if (!child) {
      child = document.createElement(tag || "span");
      child.className = cls;
      node.appendChild(child);
    }
    return child;
  }

  function render(node) {
    const d = describe(node.pmProgress, node.pmRunning);
    node.hidden = !d;
    if (!d) return;
    node.classList.add("pm-progress");
    node.classList.toggle("is-indeterminate", d.fraction == null);
    const track = part(node, "pm-progress-track");
    track.setAttribute("role", "progressbar");
    track.setAttribute("aria-valuemin", "0");
    track.setAttribute("aria-valuemax", "100");
    if (d.percent == null) track.removeAttribute("aria-valuenow");
    else track.setAttribute("aria-valuenow", String(d.percent));
    const fill = part(track, "pm-progress-fill");
    fill.style.width = d.fraction == null ? "" : `${(d.fraction * 100).toFixed(1)}%`;
    const text = part(node, "pm-progress-text");
    const bits = [d.percent == null ? d.counts : `${d.percent}%`];
    if (node.pmDetailed && d.percent != null) bits.push(d.counts);
    if (d.eta) bits.push(d.eta);
    text.textContent = bits.join(" · ");
    track.setAttribute("aria-valuetext", [d.counts, d.eta, d.message].filter(Boolean).join(", "));
    node.title = [d.counts, d.eta, d.message].filter(Boolean).join(" · ");
    if (node.pmDetailed) part(node, "pm-progress-message").textContent = d.message;
  }

  /** Show `progress` in `node` (hidden when null); `running` enables the ETA; `detailed` adds counts and message. */
  function update(node, progress, running, detailed) {
    if (!node) return;
    node.pmProgress = progress || null;
    node.pmRunning = !!running;
    node.pmDetailed = !!detailed;
    if (progress) nodes.add(node);
    else nodes.delete(node);
    render(node);
  }

  function tick() {
    for (const node of nodes) {
      if (!node.isConnected) nodes.delete(node);
      else if (node.pmRunning) render(node);
    }
  }

  root.ProcmanProgress = { update, tick, describe, fmtEta };
})(typeof window !== "undefined" ? window : globalThis);

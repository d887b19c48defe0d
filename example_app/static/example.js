/*
 * The example's shared page script (window.Example):
 *  - times: every <time datetime="ISO"> shows the reader's local time with its zone's name
 *    ("2026-01-02 15:04:05 CET"); the server renders UTC, labelled, for pages without JavaScript;
 *  - durations: every element with data-seconds shows a duration, counting up every second
 *    when it also has data-live (the server's figure at render time plus the time since);
 *  - forms with data-confirm ask before they are sent.
 * Call Example.refresh(root) right after putting new server HTML into the page.
 */
(function () {
  "use strict";

  var zoneFormat = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" });

  function pad(n) { return String(n).padStart(2, "0"); }

  function zoneName(date) {
    var parts = zoneFormat.formatToParts(date);
    for (var i = 0; i < parts.length; i++) {
      if (parts[i].type === "timeZoneName") { return parts[i].value; }
    }
    return "";
  }

  /** "2026-01-02T14:04:05+00:00" -> "2026-01-02 15:04:05 CET" in this browser's zone (null if unparsable). */
  function localTime(iso) {
    var date = new Date(iso);
    if (!iso || isNaN(date.getTime())) { return null; }
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) + " " +
      pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds()) + " " + zoneName(date);
  }

  /** The format of views.format_duration: "4.2 s", "3 min 07 s", "1 h 05 min" (whole seconds while live). */
  function formatDuration(seconds, live) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) { return "—"; }
    seconds = Math.max(0, seconds);
    if (live && seconds < 60) { return Math.floor(seconds) + " s"; }
    if (!live && seconds < 59.95) { return seconds.toFixed(1) + " s"; }  // what rounds to 60.0 is a minute
    var whole = live ? Math.floor(seconds) : Math.round(seconds);
    if (whole < 3600) { return Math.floor(whole / 60) + " min " + pad(whole % 60) + " s"; }
    return Math.floor(whole / 3600) + " h " + pad(Math.floor((whole % 3600) / 60)) + " min";
  }

  /** Show ``seconds`` in ``el``; ``live``: count up from now on. */
  function setDuration(el, seconds, live) {
    if (seconds === null || seconds === undefined) {
      delete el.dataset.seconds;
      delete el.dataset.live;
      el.textContent = "—";
      return;
    }
    el.dataset.seconds = String(seconds);
    el.dataset.since = String(performance.now());
    if (live) { el.dataset.live = "true"; } else { delete el.dataset.live; }
    showDuration(el);
  }

  function showDuration(el) {
    var seconds = parseFloat(el.dataset.seconds);
    if (isNaN(seconds)) { return; }
    var live = el.dataset.live === "true";
    if (live) { seconds += (performance.now() - parseFloat(el.dataset.since || "0")) / 1000; }
    el.textContent = formatDuration(seconds, live);
  }

  /**
   * Show the times and durations under ``root``. ``renderedAt``: the performance.now() at which the
   * server's durations were true (default now, for HTML just fetched; 0 for the page itself).
   */
  function refresh(root, renderedAt) {
    root = root || document;
    var since = String(renderedAt === undefined ? performance.now() : renderedAt);
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var text = localTime(el.getAttribute("datetime"));
      if (!text) { return; }
      if (!el.title) { el.title = el.textContent.trim(); }  // the server's UTC rendering
      el.textContent = text;
    });
    root.querySelectorAll("[data-seconds]").forEach(function (el) {
      if (!el.dataset.since) { el.dataset.since = since; }
      showDuration(el);
    });
  }

  function tick() {
    document.querySelectorAll("[data-seconds][data-live]").forEach(showDuration);
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
    }
  });

  refresh(document, 0);  // the page's own durations were computed just before navigation started
  window.setInterval(tick, 1000);
  window.Example = { localTime: localTime, formatDuration: formatDuration, setDuration: setDuration, refresh: refresh };
})();

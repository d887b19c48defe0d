/*
 * procman dashboard: process list, counts, details with live output.
 *
 * Plain ES2020, no dependencies but stream.js (window.ProcmanStream).
 * Every piece of server data reaches the page through textContent or
 * attribute setters, never through innerHTML.
 */
(function () {
  "use strict";

  // ------------------------------------------------------------------ setup

  const body = document.body;
  const API = (body.dataset.apiBase || "").replace(/\/+$/, "");
  const NEEDS_TOKEN = body.dataset.needsToken === "true";

  const TOKEN_KEY = "procman-token";
  const THEME_KEY = "procman-theme";
  const PAGE_SIZE_KEY = "procman-page-size";
  const TIME_KEY = "procman-log-times";
  const REFRESH_MS = 2000;
  const LOG_CAP = 2 * 1024 * 1024;        // characters kept in one log view
  const INITIAL_TAIL = 256 * 1024;        // bytes of output read when a panel opens
  const EARLIER_CHUNK = 256 * 1024;       // bytes read by "Load earlier output"
  const DOWNLOAD_CHUNK = 1024 * 1024;
  const TEXT_NODE_MAX = 16 * 1024;        // characters per text node in a log view

  const ACTIVE = new Set(["queued", "starting", "running"]);
  const FINAL = new Set(["completed", "stopped", "timed_out", "failed", "lost"]);
  const STATUS_TITLES = {
    "": "All processes",
    queued: "Queued processes",
    starting: "Starting processes",
    running: "Running processes",
    completed: "Completed processes",
    stopped: "Stopped processes",
    timed_out: "Timed-out processes",
    failed: "Failed processes",
    lost: "Lost processes",
  };
  const SIGNALS = { 1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 6: "SIGABRT", 8: "SIGFPE", 9: "SIGKILL", 11: "SIGSEGV", 13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM" };

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  const el = {
    rows: $("process-rows"),
    listLoading: $("list-loading"),
    listEmpty: $("list-empty"),
    listEmptyTitle: $("list-empty-title"),
    listEmptyHint: $("list-empty-hint"),
    listRetry: $("list-retry"),
    listTitle: $("list-title-text"),
    listTotal: $("list-total"),
    statusFilter: $("status-filter"),
    pageSize: $("page-size"),
    pageInfo: $("page-info"),
    pagePrev: $("page-prev"),
    pageNext: $("page-next"),
    banner: $("error-banner"),
    bannerMessage: $("error-message"),
    bannerDismiss: $("error-dismiss"),
    tokenForm: $("token-form"),
    tokenInput: $("token-input"),
    tokenForget: $("token-forget"),
    tokenButton: $("token-button"),
    refreshToggle: $("refresh-toggle"),
    refreshLabel: $("refresh-label"),
    lastUpdated: $("last-updated"),
    themeToggle: $("theme-toggle"),
    startButton: $("start-button"),
    layout: $("layout"),
    detail: $("process-detail"),
    detailId: $("detail-id"),
    detailStatus: $("detail-status"),
    detailLoading: $("detail-loading"),
    detailMissing: $("detail-missing"),
    detailError: $("detail-error"),
    detailErrorText: $("detail-error-text"),
    detailFields: $("detail-fields"),
    detailCmd: $("detail-cmd"),
    detailMetaBlock: $("detail-metadata-block"),
    detailMeta: $("detail-metadata"),
    stopButton: $("stop-button"),
    deleteButton: $("delete-button"),
    detailClose: $("detail-close"),
    copyId: $("detail-copy-id"),
    copyCmd: $("detail-copy-cmd"),
    streamState: $("stream-state"),
    autoscroll: $("autoscroll-toggle"),
    wrap: $("wrap-toggle"),
    download: $("log-download"),
    logNote: $("log-note"),
    logNoteText: $("log-note-text"),
    loadEarlier: $("log-load-earlier"),
    logEmpty: $("log-empty"),
    tabStdoutLabel: $("tab-stdout-label"),
    confirmDialog: $("confirm-dialog"),
    confirmTitle: $("confirm-title"),
    confirmMessage: $("confirm-message"),
    confirmOk: $("confirm-ok"),
    startDialog: $("start-dialog"),
    startForm: $("start-form"),
    startError: $("start-error"),
    startProgram: $("start-program"),
    startProgramCmd: $("start-program-cmd"),
    startProgramMeta: $("start-program-meta"),
    startArgsField: $("start-args-field"),
    startArgs: $("start-args"),
    startArgsPreview: $("start-args-preview"),
    startEnvFieldset: $("start-env-fieldset"),
    startEnvFields: $("start-env-fields"),
    startId: $("start-id"),
    startQueue: $("start-queue"),
    startSubmit: $("start-submit"),
    toast: $("toast"),
  };

  const state = {
    status: "",
    backend: "",
    limit: 25,
    offset: 0,
    total: 0,
    timer: null,
    inflight: false,
    again: false,
    paused: false,
    authBlocked: false,
    loadedOnce: false,
    skew: 0,                 // server clock minus client clock, ms
    rows: new Map(),         // id -> <tr>
    listed: new Map(),       // id -> last status dict from the list
    selectedId: null,
    detail: null,
    detailSeq: 0,
    stream: null,
    tab: "stdout",
    follow: true,
    followOffByScroll: false,
    programs: null,
    programsAt: 0,
    pendingId: null,
    logsLoaded: false,
  };

  // --------------------------------------------------------------- storage

  let memoryToken = null;
  function getToken() {
    if (!NEEDS_TOKEN) return null;
    try {
      return sessionStorage.getItem(TOKEN_KEY) || memoryToken;
    } catch (_) {
      return memoryToken;
    }
  }
  function setToken(value) {
    memoryToken = value || null;
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_) {
      /* storage unavailable: keep it in memory */
    }
  }
  function pref(key, fallback) {
    try {
      const v = localStorage.getItem(key);
      return v == null ? fallback : v;
    } catch (_) {
      return fallback;
    }
  }
  function setPref(key, value) {
    try {
      localStorage.setItem(key, value);
    } catch (_) {
      /* ignore */
    }
  }

  // ------------------------------------------------------------ formatting

  // Times are this browser's local time, always with the zone's name ("14:02:05 CET"): never a bare clock time.
  const fmtTime = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short" });
  const fmtDayTime = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", timeZoneName: "short" });
  const fmtFull = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
  });

  function now() {
    return Date.now() + state.skew;
  }

  function parseDate(iso) {
    if (!iso) return null;
    const t = Date.parse(iso);
    return Number.isNaN(t) ? null : new Date(t);
  }

  function shortDate(iso) {
    const d = parseDate(iso);
    if (!d) return "—";
    const today = new Date(now());
    const sameDay = d.getFullYear() === today.getFullYear() && d.getMonth() === today.getMonth() && d.getDate() === today.getDate();
    return sameDay ? fmtTime.format(d) : fmtDayTime.format(d);
  }

  function fullDate(iso) {
    const d = parseDate(iso);
    return d ? fmtFull.format(d) : "—";
  }

  function relative(iso) {
    const d = parseDate(iso);
    if (!d) return "";
    const s = Math.round((now() - d.getTime()) / 1000);
    const abs = Math.abs(s);
    let text;
    if (abs < 5) return "just now";
    if (abs < 60) text = `${abs} s`;
    else if (abs < 3600) text = `${Math.floor(abs / 60)} min`;
    else if (abs < 86400) text = `${Math.floor(abs / 3600)} h`;
    else text = `${Math.floor(abs / 86400)} d`;
    return s >= 0 ? `${text} ago` : `in ${text}`;
  }

  function fmtDuration(seconds, live) {
    if (seconds == null || Number.isNaN(seconds)) return "—";
    if (seconds < 0) seconds = 0;
    if (!live && seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 60) return live ? `${Math.floor(seconds)} s` : `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
    const total = Math.floor(seconds);
    const d = Math.floor(total / 86400);
    const h = Math.floor((total % 86400) / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = total % 60;
    const pad = (n) => String(n).padStart(2, "0");
    if (d) return `${d}d ${pad(h)}h`;
    if (h) return `${h}h ${pad(m)}m`;
    return `${m}m ${pad(s)}s`;
  }

  function fmtBytes(n) {
    if (n == null) return "—";
    if (n < 1024) return `${n} B`;
    const units = ["KB", "MB", "GB", "TB"];
    let v = n;
    let i = -1;
    do {
      v /= 1024;
      i += 1;
    } while (v >= 1024 && i < units.length - 1);
    return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
  }

  function fmtCount(n) {
    return n == null ? "–" : Number(n).toLocaleString();
  }

  function fmtReturnCode(rc) {
    if (rc == null) return "—";
    if (rc < 0 && SIGNALS[-rc]) return `${rc} (${SIGNALS[-rc]})`;
    return String(rc);
  }

  function shellQuote(arg) {
    const s = String(arg);
    if (s === "") return "''";
    if (/^[A-Za-z0-9_\-+=.,/:@%^]+$/.test(s)) return s;
    return "'" + s.replace(/'/g, "'\\''") + "'";
  }

  function commandText(cmd) {
    if (cmd == null) return "";
    if (Array.isArray(cmd)) return cmd.map(shellQuote).join(" ");
    return String(cmd);
  }

  /** Split a string like a POSIX shell would split words (quotes, backslashes); null on bad quoting. */
  function shellSplit(text) {
    const words = [];
    let cur = "";
    let inWord = false;
    let quote = null;
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (quote === "'") {
        if (c === "'") quote = null;
        else cur += c;
      } else if (quote === '"') {
        if (c === '"') quote = null;
        else if (c === "\\" && i + 1 < text.length && '"\\$`'.includes(text[i + 1])) cur += text[++i];
        else cur += c;
      } else if (c === "'" || c === '"') {
        quote = c;
        inWord = true;
      } else if (c === "\\") {
        if (i + 1 < text.length) cur += text[++i];
        inWord = true;
      } else if (/\s/.test(c)) {
        if (inWord) words.push(cur);
        cur = "";
        inWord = false;
      } else {
        cur += c;
        inWord = true;
      }
    }
    if (quote) return null;
    if (inWord) words.push(cur);
    return words;
  }

  const ANSI = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;
  function cleanLog(text) {
    return text.indexOf("\x1b") === -1 ? text : text.replace(ANSI, "");
  }

  function setText(node, text) {
    const t = text == null ? "" : String(text);
    if (node.textContent !== t) node.textContent = t;
  }

  function setAttr(node, name, value) {
    if (value == null || value === "") {
      if (node.hasAttribute(name)) node.removeAttribute(name);
    } else if (node.getAttribute(name) !== String(value)) {
      node.setAttribute(name, value);
    }
  }

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  // ------------------------------------------------------------------- api

  class ApiError extends Error {
    constructor(status, code, message, payload) {
      super(message);
      this.status = status;
      this.code = code;
      this.payload = payload;
    }
  }

  function noteServerDate(response) {
    const header = response.headers.get("Date");
    const t = header ? Date.parse(header) : NaN;
    if (Number.isNaN(t)) return;
    const skew = t - Date.now();
    // The header has one-second precision: only correct clocks that are clearly off.
    state.skew = Math.abs(skew) > 2000 ? skew : 0;
  }

  async function api(path, options) {
    const o = options || {};
    let url = API + path;
    if (o.query) {
      const qs = new URLSearchParams();
      for (const [k, v] of Object.entries(o.query)) {
        if (v != null && v !== "") qs.set(k, String(v));
      }
      const q = qs.toString();
      if (q) url += "?" + q;
    }
    // X-Requested-With: the API refuses cookie-only state changes (cross-site request protection).
    const headers = { Accept: "application/json", "X-Requested-With": "procman-dashboard" };
    if (o.json !== undefined) headers["Content-Type"] = "application/json";
    const token = getToken();
    if (token) headers.Authorization = "Bearer " + token;
    let response;
    try {
      response = await fetch(url, {
        method: o.method || "GET",
        headers,
        body: o.json !== undefined ? JSON.stringify(o.json) : undefined,
        credentials: "same-origin",
        cache: "no-store",
        signal: o.signal,
      });
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ApiError(0, "network", "Cannot reach the server. Retrying…");
    }
    noteServerDate(response);
    if (response.status === 204) return null;
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = null;
      }
    }
    if (!response.ok) {
      const e = data && data.error;
      const code = (e && e.code) || `http_${response.status}`;
      let message = (e && e.message) || (typeof e === "string" ? e : "") || (data && data.message) || "";
      if (!message) message = `The server answered ${response.status}${response.statusText ? " " + response.statusText : ""}.`;
      const error = new ApiError(response.status, code, message, data);
      if ((response.status === 401 || response.status === 403) && !o.noAuthHandling) authFailed(error, !!o.lock);
      throw error;
    }
    if (data == null && text) throw new ApiError(response.status, "bad_response", "The server sent a response that is not JSON.");
    return data;
  }

  // ------------------------------------------------------- banner & toasts

  let bannerKey = null;
  function showBanner(message, key, kind) {
    bannerKey = key || "error";
    setText(el.bannerMessage, message);
    el.banner.dataset.kind = kind || "error";
    el.banner.hidden = false;
  }
  function clearBanner(key) {
    if (el.banner.hidden) return;
    if (key && bannerKey !== key) return;
    el.banner.hidden = true;
    bannerKey = null;
  }

  let toastTimer = null;
  function toast(message, kind) {
    setText(el.toast, message);
    el.toast.dataset.kind = kind || "info";
    el.toast.hidden = false;
    el.toast.classList.remove("is-leaving");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => {
      el.toast.classList.add("is-leaving");
      toastTimer = setTimeout(() => { el.toast.hidden = true; }, 250);
    }, 2600);
  }

  function reportError(err, key) {
    if (err && err.name === "AbortError") return;
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) return; // authFailed showed it
    showBanner(err && err.message ? err.message : String(err), key || "error");
  }

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      const area = make("textarea");
      area.value = text;
      area.setAttribute("readonly", "");
      area.className = "visually-hidden";
      document.body.appendChild(area);
      area.select();
      try {
        document.execCommand("copy");
      } catch (_e) {
        /* ignore */
      }
      area.remove();
    }
    toast("Copied to the clipboard");
  }

  // ------------------------------------------------------------------ auth

  /**
   * A refused request. A 401, or a refused read of the list (``lock``: a wrong token, or an authorize
   * callback that says no), locks the page as a missing token does: refreshing stops, the list says
   * "Locked" and how to open it. A refused action (stop, delete, start) or a refused read of one
   * process only says so.
   */
  function authFailed(error, lock) {
    const hint = !NEEDS_TOKEN && error.status === 401 ? " Log in to the application, then reload this page." : "";
    showBanner(error.message + hint, "auth");
    if (NEEDS_TOKEN) showTokenForm(true);
    if (error.status === 401 || (lock && error.status === 403)) {
      state.authBlocked = true;
      clearTimeout(state.timer);
      closeStream();
      updateLiveIndicator();
      showLockedList(error);
    }
  }

  function showLockedList(error) {
    el.listRetry.hidden = NEEDS_TOKEN; // in the banner: there with rows shown too (access lost mid-session)
    if (state.rows.size) return; // keep what was shown before
    el.listLoading.hidden = true;
    el.listEmpty.hidden = false;
    setText(el.listEmptyTitle, "Locked");
    let hint = "Enter the API token above to see the processes.";
    if (!NEEDS_TOKEN && error && error.code === "api_closed") {
      hint = "The procman API is closed: set PROCMAN_API_TOKEN or register @procman.authorize in the application, then try again.";
    } else if (!NEEDS_TOKEN) {
      hint = "The application does not let you read the processes: log in to it as someone who may, then try again.";
    }
    setText(el.listEmptyHint, hint);
  }

  /** Leave the locked state (a token was given, or "Try again"): load the list and the asked-for process. */
  function unlock() {
    state.authBlocked = false;
    el.listRetry.hidden = true;
    clearBanner("auth");
    updateLiveIndicator();
    if (!state.rows.size) {
      el.listEmpty.hidden = true;
      el.listLoading.hidden = false;
    }
    refresh();
    loadPrograms(true).catch(() => {});
    if (state.pendingId) {
      const id = state.pendingId;
      state.pendingId = null;
      openDetail(id);
    } else if (state.selectedId) {
      openDetail(state.selectedId, true);
    }
  }

  function showTokenForm(focus) {
    if (!NEEDS_TOKEN) return;
    el.tokenForm.hidden = false;
    el.tokenForget.hidden = !getToken();
    el.tokenInput.placeholder = getToken() ? "A token is stored: paste a new one to replace it" : "Paste the API token";
    if (focus) setTimeout(() => el.tokenInput.focus(), 0);
  }

  function initAuth() {
    el.listRetry.addEventListener("click", unlock);
    if (!NEEDS_TOKEN) return;
    el.tokenButton.hidden = false;
    el.tokenButton.addEventListener("click", () => {
      if (el.tokenForm.hidden) showTokenForm(true);
      else if (getToken()) el.tokenForm.hidden = true;
    });
    el.tokenForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const value = el.tokenInput.value.trim();
      if (!value) {
        el.tokenInput.focus();
        return;
      }
      setToken(value);
      el.tokenInput.value = "";
      el.tokenForm.hidden = true;
      unlock();
    });
    el.tokenForget.addEventListener("click", () => {
      setToken(null);
      el.tokenInput.value = "";
      state.authBlocked = true;
      clearTimeout(state.timer);
      closeStream();
      updateLiveIndicator();
      showTokenForm(true);
    });
    if (!getToken()) {
      state.authBlocked = true;
      showTokenForm(true);
      showLockedList();
    }
  }

  // ----------------------------------------------------------------- theme

  const THEMES = ["auto", "light", "dark"];
  function applyTheme(theme) {
    document.documentElement.dataset.theme = theme;
    const label = { auto: "system", light: "light", dark: "dark" }[theme];
    el.themeToggle.title = `Theme: ${label} (click to change)`;
  }
  function initTheme() {
    let theme = pref(THEME_KEY, "auto");
    if (!THEMES.includes(theme)) theme = "auto";
    applyTheme(theme);
    el.themeToggle.addEventListener("click", () => {
      const next = THEMES[(THEMES.indexOf(document.documentElement.dataset.theme) + 1) % THEMES.length];
      setPref(THEME_KEY, next);
      applyTheme(next);
    });
  }

  // ------------------------------------------------------------ url state

  function readHash() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    const status = params.get("status") || "";
    state.status = STATUS_TITLES[status] !== undefined ? status : "";
    const limit = parseInt(params.get("limit") || pref(PAGE_SIZE_KEY, "25"), 10);
    state.limit = [25, 50, 100, 200].includes(limit) ? limit : 25;
    const offset = parseInt(params.get("offset") || "0", 10);
    state.offset = Number.isFinite(offset) && offset > 0 ? offset : 0;
    return params.get("process") || null;
  }

  function writeHash() {
    const params = new URLSearchParams();
    if (state.status) params.set("status", state.status);
    if (state.offset) params.set("offset", String(state.offset));
    if (state.limit !== 25) params.set("limit", String(state.limit));
    if (state.selectedId) params.set("process", state.selectedId);
    const hash = params.toString();
    const url = location.pathname + location.search + (hash ? "#" + hash : "");
    if (url !== location.pathname + location.search + location.hash) history.replaceState(null, "", url);
  }

  // ------------------------------------------------------------ refreshing

  function schedule() {
    clearTimeout(state.timer);
    if (document.hidden || state.paused || state.authBlocked) return;
    state.timer = setTimeout(refresh, REFRESH_MS);
  }

  async function refresh() {
    if (state.authBlocked) return;
    if (state.inflight) {
      state.again = true;
      return;
    }
    state.inflight = true;
    clearTimeout(state.timer);
    const query = { status: state.status, limit: state.limit, offset: state.offset };
    if (state.backend) query.backend = state.backend;
    try {
      const [stats, list] = await Promise.all([api("/stats", { lock: true }), api("/processes", { query, lock: true })]);
      renderStats(stats);
      // Filters may have changed while the request ran: only render a matching answer.
      if (query.status === state.status && query.limit === state.limit && query.offset === state.offset &&
          (query.backend || "") === state.backend) {
        if (renderList(list)) state.again = true;
      } else {
        state.again = true;
      }
      clearBanner("network");
      clearBanner("refresh");
      if (!state.authBlocked) clearBanner("auth");
      if (el.refreshToggle.classList.contains("is-error")) {
        el.refreshToggle.classList.remove("is-error");
        updateLiveIndicator();
      }
      setText(el.lastUpdated, `Updated ${fmtTime.format(new Date())}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 0) {
        showBanner("Cannot reach the server. Retrying every few seconds…", "network", "warning");
        el.refreshToggle.classList.add("is-error");
        setText(el.refreshLabel, "Offline");
      } else {
        reportError(err, "refresh");
      }
    } finally {
      state.inflight = false;
      if (state.again) {
        state.again = false;
        setTimeout(refresh, 0);
      } else {
        schedule();
      }
    }
  }

  function updateLiveIndicator() {
    const paused = state.paused || state.authBlocked;
    el.refreshToggle.setAttribute("aria-pressed", state.paused ? "true" : "false");
    el.refreshToggle.classList.toggle("is-paused", paused);
    setText(el.refreshLabel, state.paused ? "Paused" : state.authBlocked ? "Locked" : "Live");
    el.refreshToggle.title = state.paused ? "Resume auto-refresh" : "Pause auto-refresh (every 2 s)";
  }

  function initRefresh() {
    el.refreshToggle.addEventListener("click", () => {
      state.paused = !state.paused;
      updateLiveIndicator();
      if (!state.paused) refresh();
      else clearTimeout(state.timer);
    });
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) clearTimeout(state.timer);
      else if (!state.paused) refresh();
    });
    updateLiveIndicator();
  }

  // ----------------------------------------------------------------- stats

  function renderStats(stats) {
    if (!stats) return;
    const by = stats.by_status || {};
    const running = stats.running != null ? stats.running : by.running || 0;
    const queued = stats.queued != null ? stats.queued : by.queued || 0;
    const max = stats.max_processes;
    setText($("stat-running-count"), fmtCount(running));
    setText($("stat-queued-count"), fmtCount(queued));
    const hasMax = max != null && max > 0;
    setText($("stat-max"), hasMax ? fmtCount(max) : "no");
    const bar = $("capacity-bar");
    const ratio = hasMax ? Math.min(1, running / max) : 0;
    bar.style.width = `${Math.round(ratio * 100)}%`;
    bar.dataset.level = !hasMax ? "none" : ratio >= 1 ? "full" : ratio >= 0.75 ? "high" : "ok";
    $("stat-running").title = hasMax ? `${running} of at most ${max} processes running` : `${running} running`;
    let total = 0;
    for (const v of Object.values(by)) total += Number(v) || 0;
    for (const node of document.querySelectorAll("[data-count]")) {
      setText(node, fmtCount(by[node.dataset.count] || 0));
    }
    setText($("stat-total"), fmtCount(total));
  }

  function markActiveFilter() {
    for (const button of document.querySelectorAll(".stat[data-filter]")) {
      button.setAttribute("aria-pressed", button.dataset.filter === state.status ? "true" : "false");
    }
    el.statusFilter.value = state.status;
    el.pageSize.value = String(state.limit);
    setText(el.listTitle, STATUS_TITLES[state.status] || "Processes");
  }

  function setFilter(status) {
    if (status === state.status) return;
    state.status = status;
    state.offset = 0;
    markActiveFilter();
    showListLoading();
    writeHash();
    refresh();
  }

  // ------------------------------------------------------------------ list

  function showListLoading() {
    for (const tr of state.rows.values()) tr.remove();
    state.rows.clear();
    el.listEmpty.hidden = true;
    el.listLoading.hidden = false;
  }

  function buildRow(id) {
    const tr = make("tr", "row");
    tr.dataset.processId = id;
    tr.tabIndex = 0;
    const cells = ["col-id mono", "col-program", "status col-status", "col-progress", "col-pid num mono", "col-started", "col-duration num", "col-rc num mono", "col-cmd mono"];
    for (const cls of cells) tr.appendChild(make("td", cls));
    const idCell = tr.cells[0];
    idCell.appendChild(make("span", "id-text", id));
    idCell.title = id;
    tr.cells[2].appendChild(make("span", "pill"));
    tr.cells[3].appendChild(make("span", "row-progress"));
    tr.cells[8].appendChild(make("span", "cmd-text"));
    return tr;
  }

  function updateRow(tr, p) {
    const [, program, status, progress, pid, started, duration, rc, cmd] = tr.cells;
    if (window.ProcmanProgress) window.ProcmanProgress.update(progress.firstChild, p.progress, p.status === "running", false);
    setAttr(tr, "data-status", p.status);
    // A run on a cluster backend says where: "eval · cluster".
    const where = p.backend && p.backend !== "local" ? ` · ${p.backend}` : "";
    if (p.program) {
      setText(program, p.program + where);
      program.classList.remove("muted");
    } else {
      setText(program, "ad hoc" + where);
      program.classList.add("muted");
    }
    const pill = status.firstChild;
    setText(pill, p.status);
    setAttr(pill, "data-status", p.status);
    setText(pid, p.pid == null ? "—" : p.pid);
    setText(started, shortDate(p.started_at || (p.status === "queued" ? p.created_at : null)));
    started.title = p.started_at ? `Started ${fullDate(p.started_at)}` : p.created_at ? `Created ${fullDate(p.created_at)}` : "";
    started.classList.toggle("muted", !p.started_at);
    if (p.status === "running" && p.started_at) {
      setAttr(duration, "data-since", p.started_at);
      setText(duration, liveDuration(p.started_at));
    } else {
      setAttr(duration, "data-since", null);
      setText(duration, fmtDuration(p.duration));
    }
    setText(rc, p.return_code == null ? "—" : p.return_code);
    rc.classList.toggle("rc-bad", p.return_code != null && p.return_code !== 0);
    rc.classList.toggle("rc-ok", p.return_code === 0);
    rc.title = p.return_code != null && p.return_code < 0 ? fmtReturnCode(p.return_code) : "";
    const text = commandText(p.cmd);
    setText(cmd.firstChild, text);
    cmd.title = text;
    tr.classList.toggle("is-selected", p.id === state.selectedId);
    tr.setAttribute("aria-selected", p.id === state.selectedId ? "true" : "false");
  }

  /** Render a list answer; true when another request is needed (page past the end). */
  function renderList(data) {
    const processes = Array.isArray(data && data.processes) ? data.processes : [];
    state.total = Number(data && data.total) || 0;
    if (state.offset > 0 && state.offset >= state.total) {
      state.offset = state.total ? Math.floor((state.total - 1) / state.limit) * state.limit : 0;
      writeHash();
      return true;
    }
    state.loadedOnce = true;
    el.listLoading.hidden = true;
    const seen = new Set();
    let previous = null;
    state.listed.clear();
    for (const p of processes) {
      if (!p || p.id == null) continue;
      const id = String(p.id);
      seen.add(id);
      state.listed.set(id, p);
      let tr = state.rows.get(id);
      if (!tr) {
        tr = buildRow(id);
        state.rows.set(id, tr);
      }
      updateRow(tr, p);
      const expected = previous ? previous.nextSibling : el.rows.firstChild;
      if (expected !== tr) el.rows.insertBefore(tr, expected);
      previous = tr;
    }
    for (const [id, tr] of state.rows) {
      if (!seen.has(id)) {
        tr.remove();
        state.rows.delete(id);
      }
    }
    el.listEmpty.hidden = processes.length > 0;
    if (!processes.length) {
      setText(el.listEmptyTitle, state.status ? `No ${state.status} processes` : "No processes yet");
      setText(el.listEmptyHint, state.status ? "Pick another status above, or show all." : "Processes the application starts will show up here.");
    }
    setText(el.listTotal, fmtCount(state.total));
    const first = processes.length ? state.offset + 1 : 0;
    const last = state.offset + processes.length;
    setText(el.pageInfo, state.total ? `${fmtCount(first)}–${fmtCount(last)} of ${fmtCount(state.total)}` : "No results");
    el.pagePrev.disabled = state.offset <= 0;
    el.pageNext.disabled = state.offset + state.limit >= state.total;

    // Keep the detail panel in step when its live stream is not running.
    if (state.selectedId && state.detail && !streamLive()) {
      const p = state.listed.get(state.selectedId);
      if (p && p.status !== state.detail.status) {
        mergeDetail(p);
        if (ACTIVE.has(p.status)) openDetail(state.selectedId, true);
      }
    }
    return false;
  }

  function initList() {
    el.rows.addEventListener("click", (event) => {
      const tr = event.target.closest("tr[data-process-id]");
      if (!tr) return;
      const selection = window.getSelection && window.getSelection();
      if (selection && selection.type === "Range" && tr.contains(selection.anchorNode)) return;
      openDetail(tr.dataset.processId);
    });
    el.rows.addEventListener("keydown", (event) => {
      const tr = event.target.closest("tr[data-process-id]");
      if (!tr) return;
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        openDetail(tr.dataset.processId);
      } else if (event.key === "ArrowDown" && tr.nextElementSibling) {
        event.preventDefault();
        tr.nextElementSibling.focus();
      } else if (event.key === "ArrowUp" && tr.previousElementSibling) {
        event.preventDefault();
        tr.previousElementSibling.focus();
      }
    });
    el.statusFilter.addEventListener("change", () => setFilter(el.statusFilter.value));
    const backendFilter = $("backend-filter");
    if (backendFilter) {
      backendFilter.addEventListener("change", () => {
        state.backend = backendFilter.value;
        state.offset = 0;
        refresh();
      });
    }
    for (const button of document.querySelectorAll(".stat[data-filter]")) {
      button.addEventListener("click", () => {
        const f = button.dataset.filter;
        setFilter(f === state.status && f !== "" ? "" : f);
      });
    }
    el.pageSize.addEventListener("change", () => {
      state.limit = parseInt(el.pageSize.value, 10) || 25;
      state.offset = 0;
      setPref(PAGE_SIZE_KEY, String(state.limit));
      writeHash();
      refresh();
    });
    el.pagePrev.addEventListener("click", () => {
      state.offset = Math.max(0, state.offset - state.limit);
      writeHash();
      refresh();
    });
    el.pageNext.addEventListener("click", () => {
      if (state.offset + state.limit >= state.total) return;
      state.offset += state.limit;
      writeHash();
      refresh();
    });
  }

  // ------------------------------------------------------- live durations

  function liveDuration(since) {
    const d = parseDate(since);
    return d ? fmtDuration((now() - d.getTime()) / 1000, true) : "—";
  }

  function tick() {
    for (const node of document.querySelectorAll("[data-since]")) {
      setText(node, liveDuration(node.dataset.since));
    }
    for (const node of document.querySelectorAll("[data-rel]")) {
      setText(node, relative(node.dataset.rel));
    }
    if (window.ProcmanProgress) window.ProcmanProgress.tick();
  }

  // ------------------------------------------------------------- log views

  /** One <pre>: appends text in batches, keeps at most LOG_CAP characters. */
  class LogView {
    constructor(pre, gutter) {
      this.pre = pre;
      this.gutter = gutter || null;  // time labels at line starts (ProcmanLogTime.Gutter)
      this.reset();
    }
    reset() {
      this.pre.textContent = "";
      this.chars = 0;
      this.dropped = 0;     // characters removed from the front to respect the cap
      this.atLineStart = true;
      if (this.gutter) this.gutter.reset();
    }
    /** Append `text`; `offset` (its first byte in the stream) gives each line its time label. */
    append(text, cls, offset) {
      if (!text) return;
      if (!this.gutter || offset == null) {
        this.appendText(cleanLog(text), cls);
        this.atLineStart = text.endsWith("\n");
        return;
      }
      const split = window.ProcmanLogTime.pieces(text, offset, this.atLineStart);
      this.atLineStart = split.atLineStart;
      for (const piece of split.pieces) {
        if (piece.start != null) this.pre.appendChild(this.gutter.label(piece.start));
        this.appendText(cleanLog(piece.text), cls);
      }
    }
    appendText(text, cls) {
      const pre = this.pre;
      const last = pre.lastChild;
      if (!cls) {
        if (last && last.nodeType === Node.TEXT_NODE && last.length < TEXT_NODE_MAX) last.appendData(text);
        else pre.appendChild(document.createTextNode(text));
      } else if (last && last.nodeType === Node.ELEMENT_NODE && last.className === cls && last.firstChild && last.firstChild.length < TEXT_NODE_MAX) {
        last.firstChild.appendData(text);
      } else {
        pre.appendChild(make("span", cls, text));
      }
      this.chars += text.length;
    }
    prepend(text, cls, offset) {
      if (!text) return;
      const fragment = document.createDocumentFragment();
      const parts = this.gutter && offset != null ? window.ProcmanLogTime.pieces(text, offset, true).pieces : [{ text, start: null }];
      for (const piece of parts) {
        if (piece.start != null) fragment.appendChild(this.gutter.label(piece.start));
        const shown = cleanLog(piece.text);
        fragment.appendChild(cls ? make("span", cls, shown) : document.createTextNode(shown));
      }
      this.pre.insertBefore(fragment, this.pre.firstChild);
      this.chars += text.length;
    }
    enforceCap() {
      let excess = this.chars - LOG_CAP;
      while (excess > 0 && this.pre.firstChild) {
        const node = this.pre.firstChild;
        const length = node.textContent.length;
        if (length <= excess) {
          node.remove();
          excess -= length;
          this.chars -= length;
          this.dropped += length;
          continue;
        }
        const textNode = node.nodeType === Node.TEXT_NODE ? node : node.firstChild;
        let cut = excess;
        const newline = textNode.data.indexOf("\n", cut);
        if (newline !== -1 && newline - cut < 4096) cut = newline + 1; // start on a line
        textNode.deleteData(0, cut);
        this.chars -= cut;
        this.dropped += cut;
        excess = 0;
      }
    }
  }

  const LT = window.ProcmanLogTime;
  // The time index entries of each stream: when each byte was written (see logtime.js).
  const timelines = { stdout: new LT.Timeline(), stderr: new LT.Timeline() };
  const views = {
    stdout: new LogView($("log-stdout"), new LT.Gutter(timelines.stdout)),
    stderr: new LogView($("log-stderr"), new LT.Gutter(timelines.stderr)),
    // "both": lines of the two streams ordered by when they were written (to the second).
    combined: new LT.Merged($("log-combined"), timelines, { cap: LOG_CAP, clean: (text) => cleanLog(text) }),
  };
  // Byte positions of what the views show, per stream.
  const logs = {
    stdout: { start: 0, next: 0 },
    stderr: { start: 0, next: 0 },
  };
  let pending = [];
  let flushTimer = null;
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();

  function resetLogs() {
    pending = [];
    clearTimeout(flushTimer);
    flushTimer = null;
    for (const v of Object.values(views)) v.reset();
    for (const tl of Object.values(timelines)) tl.reset();
    logs.stdout = { start: 0, next: 0 };
    logs.stderr = { start: 0, next: 0 };
    el.logNote.hidden = true;
    state.logsLoaded = false;
    updateLogEmpty();
  }

  /** Queue output of one stream that covers bytes [offset, next) of it; `times` are its index entries. */
  function addOutput(stream, text, offset, next, times) {
    const L = logs[stream];
    if (!L || text == null) return;
    if (times) timelines[stream].add(times);
    let start = offset;
    if (next != null && offset != null) {
      if (next <= L.next) return; // already shown
      if (offset > L.next) {
        const dropped = state.detail && Number(state.detail[`${stream}_dropped`]) >= offset;
        const what = dropped ? "dropped by the log cap (max_log_bytes)" : "not shown";
        pending.push([stream, `\n[… ${fmtBytes(offset - L.next)} of output ${what} …]\n`, "log-gap", null]);
      } else if (offset < L.next) {
        text = decoder.decode(encoder.encode(text).subarray(L.next - offset)); // overlap: drop what is shown
        start = L.next;
      }
      L.next = next;
    }
    // Byte offsets must stay exact: only ANSI escapes are removed, after the offsets are counted.
    if (text) pending.push([stream, text, null, start]);
    scheduleFlush();
  }

  /** Index entries that arrived after their bytes (SSE `times`): label and place the waiting lines. */
  function addTimes(stream, times) {
    if (!timelines[stream] || !timelines[stream].add(times)) return;
    views[stream].gutter.refresh();
    views.combined.refresh();
    updateLogNote();
    updateLogEmpty();
  }

  function scheduleFlush() {
    if (flushTimer == null) flushTimer = setTimeout(flushLogs, 40);
  }

  function flushLogs() {
    flushTimer = null;
    if (!pending.length) return;
    const batch = pending;
    pending = [];
    for (const [stream, text, cls, offset] of batch) {
      if (offset == null) {
        views[stream].append(text, cls);  // a gap marker: the "both" view leaves it out
        continue;
      }
      // Line starts are counted in bytes of the raw text; ANSI escapes are removed from what is shown.
      views[stream].append(text, cls, offset);
      views.combined.add(stream, text, offset, cls);
    }
    for (const stream of ["stdout", "stderr"]) views[stream].gutter.refresh();
    for (const v of Object.values(views)) v.enforceCap();
    updateLogEmpty();
    updateLogNote();
    updateSizes();
    if (state.follow) scrollLogToEnd();
  }

  function activeView() {
    return views[state.tab];
  }

  function scrollLogToEnd() {
    const pre = activeView().pre;
    pre.scrollTop = pre.scrollHeight;
  }

  function updateLogEmpty() {
    const empty = activeView().chars === 0;
    el.logEmpty.hidden = !empty;
    if (empty) {
      const ended = state.detail && FINAL.has(state.detail.status);
      setText(el.logEmpty, ended ? "This process wrote no output here." : state.detail && state.detail.status === "queued" ? "Waiting for the process to start…" : "No output yet.");
    }
  }

  function streamSize(stream) {
    const d = state.detail;
    const size = d ? d[`${stream}_size`] : null;
    return Math.max(size == null ? 0 : Number(size) || 0, logs[stream].next);
  }

  function updateLogNote() {
    const tab = state.tab;
    const view = activeView();
    if (tab === "combined") {
      el.logNote.hidden = !(state.detail && !state.detail.merge_stderr);
      const waiting = view.pending ? ` ${view.pending} newer line${view.pending === 1 ? " waits" : "s wait"} for its time.` : "";
      setText(el.logNoteText, "stdout and stderr interleaved by when each line was written, to the second: the order "
        + "of lines within one second is not known (start with merge_stderr=True for the exact order)." + waiting);
      el.loadEarlier.hidden = true;
      return;
    }
    const L = logs[tab];
    const hiddenBytes = L.start;
    const dropped = view.dropped > 0;
    const capped = state.detail ? Number(state.detail[`${tab}_dropped`]) || 0 : 0;
    if (capped > 0 && (hiddenBytes <= capped || L.truncated)) {
      // The head of the log file itself is gone: the log cap (max_log_bytes) dropped it.
      el.logNote.hidden = false;
      setText(el.logNoteText, `The first ${fmtBytes(capped)} of ${tab} were dropped by the log cap (max_log_bytes); `
        + `showing what is kept, from byte ${capped.toLocaleString()}.`);
      el.loadEarlier.hidden = true;
      return;
    }
    if (!hiddenBytes && !dropped) {
      el.logNote.hidden = true;
      return;
    }
    el.logNote.hidden = false;
    const path = `${API}/processes/${state.selectedId}/output?stream=${tab}&offset=0`;
    if (dropped) {
      setText(el.logNoteText, `Only the last ${fmtBytes(LOG_CAP)} of output are kept on this page. The complete output is available from ${path}, or with Download.`);
    } else {
      const size = streamSize(tab);
      setText(el.logNoteText, `Showing the last ${fmtBytes(size - hiddenBytes)} of ${fmtBytes(size)}. Earlier output is available from ${path}.`);
    }
    el.loadEarlier.hidden = dropped || hiddenBytes <= 0 || view.chars >= LOG_CAP;
  }

  function selectTab(tab) {
    if (!views[tab]) return;
    state.tab = tab;
    for (const button of document.querySelectorAll(".tab[data-tab]")) {
      button.setAttribute("aria-selected", button.dataset.tab === tab ? "true" : "false");
      button.tabIndex = button.dataset.tab === tab ? 0 : -1;
    }
    for (const [name, view] of Object.entries(views)) view.pre.hidden = name !== tab;
    el.download.hidden = tab === "combined";
    updateLogEmpty();
    updateLogNote();
    if (state.follow) scrollLogToEnd();
  }

  async function loadEarlier() {
    const tab = state.tab;
    const L = logs[tab];
    const id = state.selectedId;
    const seq = state.detailSeq;
    if (!L || L.start <= 0) return;
    const from = Math.max(0, L.start - EARLIER_CHUNK);
    el.loadEarlier.disabled = true;
    try {
      const r = await api(`/processes/${enc(id)}/output`, { query: { stream: tab, offset: from, limit: L.start - from } });
      if (seq !== state.detailSeq) return;
      let text = r.data || "";
      const end = r.next_offset != null ? r.next_offset : L.start;
      if (end > L.start) {
        const bytes = encoder.encode(text);
        text = decoder.decode(bytes.subarray(0, Math.max(0, bytes.length - (end - L.start))));
      } else if (end < L.start) {
        text += `\n[… ${fmtBytes(L.start - end)} of output not shown …]\n`;
      }
      const pre = views[tab].pre;
      const before = pre.scrollHeight;
      timelines[tab].add(r.times);
      views[tab].prepend(text, null, r.offset != null ? r.offset : from);
      pre.scrollTop += pre.scrollHeight - before;
      L.start = r.offset != null ? r.offset : from;
      if (r.truncated) L.truncated = true;
      updateLogEmpty();
      updateLogNote();
    } catch (err) {
      reportError(err);
    } finally {
      el.loadEarlier.disabled = false;
    }
  }

  async function downloadLog() {
    const tab = state.tab;
    const id = state.selectedId;
    if (!id || !logs[tab]) return;
    const parts = [];
    let offset = 0;
    el.download.disabled = true;
    toast(`Downloading ${tab}…`);
    try {
      for (let guard = 0; guard < 100000; guard++) {
        const r = await api(`/processes/${enc(id)}/output`, { query: { stream: tab, offset, limit: DOWNLOAD_CHUNK } });
        if (r.data) parts.push(r.data);
        const next = r.next_offset != null ? r.next_offset : offset;
        if (!r.data || next <= offset || r.ended) break;
        offset = next;
      }
      const blob = new Blob(parts, { type: "text/plain;charset=utf-8" });
      const a = make("a");
      a.href = URL.createObjectURL(blob);
      a.download = `${id}.${tab}.log`.replace(/[^\w.-]+/g, "_");
      document.body.appendChild(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    } catch (err) {
      reportError(err);
    } finally {
      el.download.disabled = false;
    }
  }

  function initLogs() {
    for (const button of document.querySelectorAll(".tab[data-tab]")) {
      button.addEventListener("click", () => selectTab(button.dataset.tab));
      button.addEventListener("keydown", (event) => {
        if (event.key !== "ArrowRight" && event.key !== "ArrowLeft") return;
        const tabs = [...document.querySelectorAll(".tab[data-tab]")].filter((b) => !b.hidden);
        const i = tabs.indexOf(button) + (event.key === "ArrowRight" ? 1 : -1);
        const target = tabs[(i + tabs.length) % tabs.length];
        selectTab(target.dataset.tab);
        target.focus();
      });
    }
    el.autoscroll.addEventListener("change", () => {
      state.follow = el.autoscroll.checked;
      state.followOffByScroll = false;
      if (state.follow) scrollLogToEnd();
    });
    el.wrap.addEventListener("change", () => {
      el.detail.classList.toggle("nowrap", !el.wrap.checked);
    });
    // The time column: when each line was written (the log's time index), to the second.
    const timeToggle = $("time-toggle");
    timeToggle.checked = pref(TIME_KEY, "off") === "on";
    el.detail.classList.toggle("show-times", timeToggle.checked);
    timeToggle.addEventListener("change", () => {
      el.detail.classList.toggle("show-times", timeToggle.checked);
      setPref(TIME_KEY, timeToggle.checked ? "on" : "off");
    });
    for (const view of Object.values(views)) {
      view.pre.addEventListener("scroll", () => {
        if (view !== activeView()) return;
        const pre = view.pre;
        const atEnd = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 24;
        if (!atEnd && state.follow) {
          state.follow = false;
          state.followOffByScroll = true;
          el.autoscroll.checked = false;
        } else if (atEnd && !state.follow && state.followOffByScroll) {
          state.follow = true;
          state.followOffByScroll = false;
          el.autoscroll.checked = true;
        }
      }, { passive: true });
    }
    el.loadEarlier.addEventListener("click", loadEarlier);
    el.download.addEventListener("click", downloadLog);
  }

  // ---------------------------------------------------------------- detail

  function streamLive() {
    return !!(state.stream && !state.stream.closed);
  }

  function closeStream() {
    if (state.stream) {
      const s = state.stream;
      state.stream = null;
      s.close();
    }
  }

  function setStreamState(kind, text, title) {
    el.streamState.dataset.state = kind;
    setText(el.streamState, text || "");
    el.streamState.title = title || "";
  }

  function fieldNode(name) {
    return el.detailFields.querySelector(`[data-field="${name}"]`);
  }

  function setField(name, text, opts) {
    const node = fieldNode(name);
    if (!node) return;
    const o = opts || {};
    setText(node, text);
    node.title = o.title || "";
    node.classList.toggle("muted", !!o.muted);
    setAttr(node, "data-since", o.since || null);
    if (o.cls !== undefined) node.dataset.tone = o.cls || "";
  }

  function renderEnvKeys(node, keys) {
    node.textContent = "";
    if (!Array.isArray(keys) || !keys.length) {
      node.textContent = "inherited only";
      node.classList.add("muted");
      return;
    }
    node.classList.remove("muted");
    for (const key of keys) node.appendChild(make("span", "chip mono", key));
  }

  function renderMetadata(meta) {
    el.detailMeta.textContent = "";
    const entries = meta && typeof meta === "object" && !Array.isArray(meta) ? Object.entries(meta) : meta != null ? [["value", meta]] : [];
    el.detailMetaBlock.hidden = entries.length === 0;
    for (const [key, value] of entries) {
      const tr = make("tr");
      tr.appendChild(make("th", "mono", key));
      const td = make("td");
      if (value !== null && typeof value === "object") {
        td.appendChild(make("pre", "kv-json", JSON.stringify(value, null, 2)));
      } else {
        const span = make("span", typeof value === "string" ? "" : "mono", value === null ? "null" : String(value));
        if (value === null) span.classList.add("muted");
        td.appendChild(span);
      }
      tr.appendChild(td);
      el.detailMeta.appendChild(tr);
    }
  }

  function renderDetail() {
    const p = state.detail;
    if (!p) return;
    setText(el.detailId, p.id);
    el.detailId.title = p.id;
    setText(el.detailStatus, p.status);
    el.detailStatus.dataset.status = p.status;
    el.detail.dataset.status = p.status;
    el.stopButton.hidden = !ACTIVE.has(p.status);
    el.deleteButton.hidden = !FINAL.has(p.status);

    setField("program", p.program || "ad hoc command", { muted: !p.program });
    setField("pid", p.pid == null ? "—" : p.pid, { muted: p.pid == null });
    setField("return_code", fmtReturnCode(p.return_code), {
      muted: p.return_code == null,
      cls: p.return_code == null ? "" : p.return_code === 0 ? "ok" : "bad",
    });
    if (p.status === "running" && p.started_at) {
      setField("duration", liveDuration(p.started_at), { since: p.started_at, title: "Running for" });
    } else {
      setField("duration", fmtDuration(p.duration), { muted: p.duration == null });
    }
    for (const key of ["created_at", "started_at", "finished_at"]) {
      const v = p[key];
      const node = fieldNode(key);
      if (node.dataset.value === (v || "")) continue;
      node.dataset.value = v || "";
      setField(key, v ? shortDate(v) : "—", { muted: !v, title: v ? `${fullDate(v)}\n${v}` : "" });
      if (v) {
        const rel = make("span", "rel", relative(v));
        rel.dataset.rel = v;
        node.appendChild(rel);
      }
    }
    setField("handler", p.handler || "—", { muted: !p.handler });
    const timeoutNode = fieldNode("timeout");
    if (timeoutNode) timeoutNode.parentElement.hidden = !("timeout" in p);
    setField("timeout", p.timeout ? fmtDuration(p.timeout) : "none", { muted: !p.timeout });
    const survivors = Array.isArray(p.survivors) ? p.survivors : [];
    if ($("detail-survivors")) {
      $("detail-survivors").hidden = survivors.length === 0;
      setText($("detail-survivors-text"), survivors.length ? `pid ${survivors.join(", ")}` : "");
    }
    renderEnvKeys(fieldNode("env_keys"), p.env_keys);
    setField("cwd", p.cwd || "—", { muted: !p.cwd });

    if (window.ProcmanProgress) window.ProcmanProgress.update($("detail-progress"), p.progress, p.status === "running", true);
    el.detailError.hidden = !p.error;
    setText(el.detailErrorText, p.error || "");
    setText(el.detailCmd, commandText(p.cmd));
    renderMetadata(p.metadata);

    const merged = !!p.merge_stderr;
    $("tab-stderr").hidden = merged;
    $("tab-combined").hidden = merged;
    setText(el.tabStdoutLabel, merged ? "output" : "stdout");
    $("tab-stdout").title = merged ? "stdout and stderr, merged" : "";
    if (merged && state.tab !== "stdout") selectTab("stdout");
    updateSizes();
    updateLogEmpty();
  }

  function updateSizes() {
    const p = state.detail;
    if (!p) return;
    for (const node of document.querySelectorAll(".tab-size[data-size]")) {
      const size = streamSize(node.dataset.size);
      setText(node, size ? fmtBytes(size) : "");
    }
    const sizes = p.merge_stderr
      ? `${fmtBytes(streamSize("stdout"))} (stderr merged into stdout)`
      : `stdout ${fmtBytes(streamSize("stdout"))} · stderr ${fmtBytes(streamSize("stderr"))}`;
    setField("output_sizes", sizes);
  }

  function mergeDetail(p) {
    if (!state.detail || !p || String(p.id) !== state.selectedId) return;
    const merged = Object.assign({}, state.detail);
    for (const [k, v] of Object.entries(p)) {
      if (k === "stdout" || k === "stderr") continue; // tails: the log views have the real text
      merged[k] = v;
    }
    state.detail = merged;
    renderDetail();
    const tr = state.rows.get(state.selectedId);
    if (tr) updateRow(tr, merged);
  }

  function showDetailPanel() {
    const wasHidden = el.detail.hidden;
    el.detail.hidden = false;
    el.layout.classList.add("has-detail");
    if (wasHidden && window.matchMedia("(max-width: 1099px)").matches) el.detail.focus({ preventScroll: true });
  }

  function markSelectedRow() {
    for (const [id, tr] of state.rows) {
      const selected = id === state.selectedId;
      tr.classList.toggle("is-selected", selected);
      tr.setAttribute("aria-selected", selected ? "true" : "false");
    }
  }

  function closeDetail() {
    state.detailSeq += 1;
    closeStream();
    state.selectedId = null;
    state.detail = null;
    el.detail.hidden = true;
    el.layout.classList.remove("has-detail");
    resetLogs();
    markSelectedRow();
    writeHash();
  }

  /** Show one process: its fields, the tail of its output, then follow its event stream. */
  async function openDetail(id, force) {
    id = String(id);
    if (id === state.selectedId && !force) return;
    const seq = ++state.detailSeq;
    const fresh = id !== state.selectedId || !state.logsLoaded;
    closeStream();
    state.selectedId = id;
    markSelectedRow();
    writeHash();
    showDetailPanel();
    if (fresh) {
      state.detail = null;
      resetLogs();
      state.follow = true;
      state.followOffByScroll = false;
      el.autoscroll.checked = true;
      selectTab("stdout");
      setText(el.detailId, id);
      setText(el.detailStatus, "");
      el.detailStatus.dataset.status = "";
      el.stopButton.hidden = true;
      el.deleteButton.hidden = true;
      el.detailLoading.hidden = false;
    }
    el.detailMissing.hidden = true;
    setStreamState("connecting", "Loading…");

    let p;
    try {
      p = await api(`/processes/${enc(id)}`);
    } catch (err) {
      if (seq !== state.detailSeq) return;
      el.detailLoading.hidden = true;
      if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
        // Open it again once a token is given.
        state.pendingId = id;
        state.selectedId = null;
        state.detail = null;
        el.detail.hidden = true;
        el.layout.classList.remove("has-detail");
        markSelectedRow();
      } else if (err instanceof ApiError && err.status === 404) {
        el.detailMissing.hidden = false;
        el.stopButton.hidden = true;
        el.deleteButton.hidden = true;
        setStreamState("idle", "");
      } else {
        setStreamState("error", "Not loaded", err.message);
        reportError(err);
      }
      return;
    }
    if (seq !== state.detailSeq) return;
    el.detailLoading.hidden = true;
    state.detail = p;
    renderDetail();
    const tr = state.rows.get(id);
    if (tr) updateRow(tr, p);

    if (fresh) {
      resetLogs();
      let complete = true;
      const streams = p.merge_stderr ? ["stdout"] : ["stdout", "stderr"];
      for (const stream of streams) {
        const size = Number(p[`${stream}_size`]) || 0;
        const start = Math.max(0, size - INITIAL_TAIL);
        logs[stream].start = start;
        logs[stream].next = start;
        if (size === 0 && FINAL.has(p.status)) continue;
        try {
          const r = await api(`/processes/${enc(id)}/output`, { query: { stream, offset: start, limit: Math.max(size - start, INITIAL_TAIL) } });
          if (seq !== state.detailSeq) return;
          let from = r.offset != null ? r.offset : start;
          const next = r.next_offset != null ? r.next_offset : from;
          let text = r.data || "";
          if (from > 0) {
            // A tail read starts mid-line (maybe mid-character): show it from the next whole line.
            const newline = text.indexOf("\n");
            if (newline !== -1 && newline < 8192) {
              text = text.slice(newline + 1);
              from = next - encoder.encode(text).length;
            }
          }
          logs[stream].start = from;
          logs[stream].next = from;
          logs[stream].truncated = !!r.truncated;  // the read began where a log cap dropped the head
          addOutput(stream, text, from, next, r.times);
          if (!r.ended) complete = false;
        } catch (err) {
          if (seq !== state.detailSeq) return;
          if (err instanceof ApiError && (err.status === 401 || err.status === 403)) return;
          // Fall back to the tail in the status record; its byte offsets are not known.
          const tail = p[stream] || "";
          const approx = Math.max(0, size - encoder.encode(tail).length);
          logs[stream].start = approx;
          logs[stream].next = approx;
          addOutput(stream, tail, approx, size);
          complete = false;
        }
      }
      flushLogs();
      state.logsLoaded = true;
      if (FINAL.has(p.status)) settleTimes(id, seq);
      if (FINAL.has(p.status) && complete) {
        setStreamState("ended", "Ended", "The process has ended; all of its output is shown.");
        return;
      }
    }
    if (FINAL.has(p.status) && !fresh) {
      setStreamState("ended", "Ended");
      return;
    }
    openStream(id, seq);
  }

  /** The run has ended: fetch the times of lines still waiting for one, then place every line. */
  async function settleTimes(id, seq) {
    const merged = views.combined;
    for (const stream of ["stdout", "stderr"]) {
      const waiting = merged.waiting[stream];
      const labels = views[stream].gutter.waiting;
      if (!waiting.length && !labels.length) continue;
      const from = Math.min(waiting.length ? waiting[0].offset : Infinity,
        labels.length ? Number(labels[0].dataset.offset) : Infinity);
      const limit = Math.min(4 * 1024 * 1024, Math.max(1, logs[stream].next - from));
      try {
        const r = await api(`/processes/${enc(id)}/output`, { query: { stream, offset: from, limit } });
        if (seq !== state.detailSeq) return;
        addTimes(stream, r.times);
      } catch (_) {
        /* no times then: the lines go after the timed ones, in stream order */
      }
    }
    if (seq !== state.detailSeq) return;
    merged.settle();
    updateLogNote();
    updateLogEmpty();
  }

  function openStream(id, seq) {
    if (!window.ProcmanStream) {
      setStreamState("error", "No live output", "stream.js is not loaded");
      return;
    }
    closeStream();
    setStreamState("connecting", "Connecting…");
    const url = `${API}/processes/${enc(id)}/events`;
    state.stream = window.ProcmanStream.open(url, {
      token: getToken,
      lastEventId: `${logs.stdout.next}:${logs.stderr.next}`,
      onOpen() {
        if (seq !== state.detailSeq) return;
        setStreamState("live", "Live", "Following the process's event stream");
      },
      onEvent(type, data) {
        if (seq !== state.detailSeq) return;
        if ((type === "stdout" || type === "stderr") && data && typeof data === "object") {
          addOutput(type, data.data || "", data.offset, data.next_offset, data.times);
        } else if (type === "times" && data && typeof data === "object") {
          addTimes(data.stream, data.times);
        } else if (type === "status" && data && typeof data === "object") {
          mergeDetail(data);
        } else if (type === "progress" && data && typeof data === "object" && state.detail) {
          mergeDetail({ id: state.detail.id, progress: data });
        } else if (type === "end" && data && data.status === "removed") {
          // The record was deleted while we watched.
          flushLogs();
          el.detailMissing.hidden = false;
          el.stopButton.hidden = true;
          el.deleteButton.hidden = true;
          setStreamState("ended", "Removed", "The process record was deleted.");
          setTimeout(refresh, 0);
        } else if (type === "end") {
          if (data && typeof data === "object") mergeDetail(data);
          flushLogs();
          const st = state.detail ? state.detail.status : "ended";
          setStreamState("ended", "Ended", `The process ended (${st}); all of its output is shown.`);
          setTimeout(refresh, 0);
          // The watcher times the last bytes just after the end: then the "both" view takes them in.
          setTimeout(() => settleTimes(id, seq), 1200);
        }
      },
      onError(err) {
        if (seq !== state.detailSeq) return;
        if (err.status === 401 || err.status === 403) {
          authFailed(new ApiError(err.status, "auth", err.message));
          setStreamState("error", "Not authorised", err.message);
        } else if (err.status === 404) {
          setStreamState("error", "Gone", err.message);
          el.detailMissing.hidden = false;
        } else if (err.fatal) {
          setStreamState("error", "Disconnected", err.message);
          showBanner(`Live output stopped: ${err.message}`, "stream");
        } else {
          const secs = Math.max(1, Math.round((err.retryIn || 1000) / 1000));
          setStreamState("waiting", `Reconnecting in ${secs} s`, err.message);
        }
      },
    });
  }

  // -------------------------------------------------------------- actions

  function confirmAction(title, message, okLabel) {
    const dialog = el.confirmDialog;
    setText(el.confirmTitle, title);
    setText(el.confirmMessage, message);
    setText(el.confirmOk, okLabel || "Confirm");
    if (typeof dialog.showModal !== "function") return Promise.resolve(window.confirm(`${title}\n\n${message}`));
    return new Promise((resolve) => {
      const done = () => {
        dialog.removeEventListener("close", done);
        resolve(dialog.returnValue === "ok");
      };
      dialog.returnValue = "cancel";
      dialog.addEventListener("close", done);
      dialog.showModal();
      el.confirmOk.focus();
    });
  }

  async function stopSelected() {
    const p = state.detail;
    if (!p || !ACTIVE.has(p.status)) return;
    const ok = await confirmAction(
      "Stop this process?",
      p.status === "queued"
        ? `Process ${p.id} is queued. Stopping it removes it from the queue; it will not start.`
        : `Process ${p.id}${p.program ? ` (${p.program})` : ""} and its child processes will be terminated.`,
      "Stop process",
    );
    if (!ok || state.detail !== p && (!state.detail || state.detail.id !== p.id)) return;
    el.stopButton.disabled = true;
    try {
      const r = await api(`/processes/${enc(p.id)}/stop`, { method: "POST" });
      if (r && r.process) mergeDetail(r.process);
      toast(`Stop requested for ${p.id}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 409) {
        toast("The process had already ended");
        openDetail(p.id, true);
      } else {
        reportError(err);
      }
    } finally {
      el.stopButton.disabled = false;
      refresh();
    }
  }

  async function deleteSelected() {
    const p = state.detail;
    if (!p || !FINAL.has(p.status)) return;
    const ok = await confirmAction(
      "Delete this process?",
      `The record of process ${p.id} and its output files will be removed. This cannot be undone.`,
      "Delete",
    );
    if (!ok) return;
    el.deleteButton.disabled = true;
    try {
      await api(`/processes/${enc(p.id)}`, { method: "DELETE" });
      toast(`Deleted ${p.id}`);
      if (state.selectedId === String(p.id)) closeDetail();
      const tr = state.rows.get(String(p.id));
      if (tr) {
        tr.remove();
        state.rows.delete(String(p.id));
      }
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        if (state.selectedId === String(p.id)) closeDetail();
      } else {
        reportError(err);
        if (err instanceof ApiError && err.status === 409) openDetail(p.id, true);
      }
    } finally {
      el.deleteButton.disabled = false;
      refresh();
    }
  }

  function initDetail() {
    el.detailClose.addEventListener("click", closeDetail);
    el.stopButton.addEventListener("click", stopSelected);
    el.deleteButton.addEventListener("click", deleteSelected);
    el.copyId.addEventListener("click", () => state.selectedId && copyText(state.selectedId));
    el.copyCmd.addEventListener("click", () => copyText(el.detailCmd.textContent));
    document.addEventListener("keydown", (event) => {
      if (event.key !== "Escape" || event.defaultPrevented) return;
      if (document.querySelector("dialog[open]")) return;
      if (event.target && /^(INPUT|SELECT|TEXTAREA)$/.test(event.target.tagName)) return;
      if (state.selectedId) closeDetail();
    });
  }

  // ---------------------------------------------------------- start dialog

  async function loadPrograms(force) {
    if (!force && state.programs && Date.now() - state.programsAt < 30000) return state.programs;
    if (state.authBlocked) return state.programs || [];
    try {
      const r = await api("/programs");
      state.programs = Array.isArray(r && r.programs) ? r.programs : [];
      state.programsAt = Date.now();
    } catch (err) {
      if (!state.programs) state.programs = [];
      if (!(err instanceof ApiError && err.status === 404)) throw err;
    } finally {
      el.startButton.hidden = !(state.programs && state.programs.length);
    }
    return state.programs;
  }

  function currentProgram() {
    return (state.programs || []).find((p) => p.name === el.startProgram.value) || null;
  }

  function renderProgramChoice() {
    const program = currentProgram();
    el.startEnvFields.textContent = "";
    if (!program) return;
    setText(el.startProgramCmd, commandText(program.cmd));
    const meta = [];
    if (program.cwd) meta.push(`in ${program.cwd}`);
    meta.push(program.timeout ? `times out after ${fmtDuration(program.timeout)}` : "no timeout");
    meta.push(program.allow_args ? "accepts arguments" : "fixed arguments");
    setText(el.startProgramMeta, meta.join(" · "));
    el.startArgsField.hidden = !program.allow_args;
    const keys = Array.isArray(program.env_keys) ? program.env_keys : [];
    el.startEnvFieldset.hidden = keys.length === 0;
    keys.forEach((key, i) => {
      const label = make("label", "env-field");
      label.htmlFor = `start-env-${i}`;
      label.appendChild(make("span", "env-key mono", key));
      const input = make("input", "input mono");
      input.id = `start-env-${i}`;
      input.type = "text";
      input.dataset.envKey = key;
      input.autocomplete = "off";
      input.spellcheck = false;
      input.placeholder = "not set";
      label.appendChild(input);
      el.startEnvFields.appendChild(label);
    });
    renderArgsPreview();
  }

  function renderArgsPreview() {
    const words = shellSplit(el.startArgs.value);
    el.startArgsPreview.textContent = "";
    if (words === null) {
      el.startArgsPreview.appendChild(make("span", "args-invalid", "Unbalanced quotes"));
      return;
    }
    for (const w of words) el.startArgsPreview.appendChild(make("span", "chip mono", w === "" ? "''" : w));
  }

  async function openStartDialog() {
    el.startError.hidden = true;
    let programs;
    try {
      programs = await loadPrograms(true);
    } catch (err) {
      reportError(err);
      return;
    }
    const previous = el.startProgram.value;
    el.startProgram.textContent = "";
    for (const p of programs) {
      const option = make("option", null, p.name);
      option.value = p.name;
      el.startProgram.appendChild(option);
    }
    if (programs.some((p) => p.name === previous)) el.startProgram.value = previous;
    el.startArgs.value = "";
    el.startId.value = "";
    renderProgramChoice();
    el.startSubmit.disabled = programs.length === 0;
    if (!programs.length) {
      el.startError.hidden = false;
      setText(el.startError, "The application declares no programs.");
    }
    el.startDialog.showModal();
    el.startProgram.focus();
  }

  async function submitStart(event) {
    event.preventDefault();
    const program = currentProgram();
    if (!program) return;
    const payload = { queue: el.startQueue.checked };
    const id = el.startId.value.trim();
    if (id) payload.process_id = id;
    if (program.allow_args) {
      const args = shellSplit(el.startArgs.value);
      if (args === null) {
        el.startError.hidden = false;
        setText(el.startError, "The arguments have unbalanced quotes.");
        el.startArgs.focus();
        return;
      }
      if (args.length) payload.args = args;
    }
    const env = {};
    for (const input of el.startEnvFields.querySelectorAll("input[data-env-key]")) {
      if (input.value !== "") env[input.dataset.envKey] = input.value;
    }
    if (Object.keys(env).length) payload.env = env;

    el.startSubmit.disabled = true;
    el.startError.hidden = true;
    try {
      const r = await api(`/programs/${enc(program.name)}/start`, { method: "POST", json: payload });
      const proc = r && (r.process || r);
      el.startDialog.close();
      if (proc && proc.id != null) {
        toast(proc.status === "queued" ? `Queued ${proc.id}` : `Started ${proc.id}`);
        openDetail(String(proc.id));
      }
      refresh();
    } catch (err) {
      el.startError.hidden = false;
      let message = err.message;
      if (err instanceof ApiError && err.status === 429 && !payload.queue) message += " Tick “Queue it” to wait for a free slot instead.";
      setText(el.startError, message);
    } finally {
      el.startSubmit.disabled = false;
    }
  }

  function initStartDialog() {
    el.startButton.addEventListener("click", openStartDialog);
    el.startProgram.addEventListener("change", renderProgramChoice);
    el.startArgs.addEventListener("input", renderArgsPreview);
    el.startForm.addEventListener("submit", submitStart);
    $("start-cancel").addEventListener("click", () => el.startDialog.close());
    $("start-close").addEventListener("click", () => el.startDialog.close());
    for (const dialog of [el.startDialog, el.confirmDialog]) {
      // A click on the backdrop closes the dialog.
      dialog.addEventListener("click", (event) => {
        if (event.target !== dialog) return;
        const r = dialog.getBoundingClientRect();
        const inside = event.clientX >= r.left && event.clientX <= r.right && event.clientY >= r.top && event.clientY <= r.bottom;
        if (!inside) dialog.close("cancel");
      });
    }
  }

  // ------------------------------------------------------------------ init

  function init() {
    initTheme();
    el.bannerDismiss.addEventListener("click", () => clearBanner());
    const processId = readHash();
    el.pageSize.value = String(state.limit);
    markActiveFilter();
    initAuth();
    initRefresh();
    initList();
    initLogs();
    initDetail();
    initStartDialog();
    selectTab("stdout");
    window.addEventListener("hashchange", () => {
      const before = [state.status, state.limit, state.offset].join("|");
      const id = readHash();
      markActiveFilter();
      if ([state.status, state.limit, state.offset].join("|") !== before) refresh();
      if (id && id !== state.selectedId) openDetail(id);
      else if (!id && state.selectedId) closeDetail();
    });
    setInterval(tick, 1000);
    if (!state.authBlocked) {
      refresh();
      loadPrograms(false).catch(() => {});
      if (processId) openDetail(processId);
    } else if (processId) {
      state.pendingId = processId; // opened once a token is entered
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();

/*
 * procman stream.js: a small Server-Sent Events client built on fetch().
 *
 * EventSource cannot send an Authorization header, so this reads the response
 * body with a ReadableStream reader and parses the event stream itself
 * (https://html.spec.whatwg.org/multipage/server-sent-events.html).
 *
 *   const s = ProcmanStream.open("/procman/api/processes/abc/events", {
 *     token: "secret",                  // string, or a function returning one; optional
 *     lastEventId: "0:0",               // optional: resume from here
 *     onOpen(response) {},
 *     onEvent(type, data, id) {},       // data is JSON-decoded when it parses, else the raw string
 *     onError(err) {},                  // err: {kind, status, message, fatal, retryIn, error}
 *     onEnd(data) {},                   // after the `end` event; the stream is closed by then
 *     onClose() {},                     // whenever the stream stops for good (end, close(), fatal error)
 *   });
 *   s.close();                          // abort; no further callbacks but onClose
 *   s.lastEventId; s.closed; s.state;   // "connecting" | "open" | "waiting" | "closed"
 *
 * Network errors, 5xx/408/429 answers and streams that end without an `end`
 * event are retried with exponential backoff (with jitter, honouring `retry:`),
 * sending the last seen id in the Last-Event-ID header. Other HTTP errors
 * (401, 403, 404, ...) are fatal: onError gets the server's message and the
 * stream closes. A 204 answer means "nothing more": the stream closes quietly.
 */
(function (root) {
  "use strict";

  const DEFAULTS = {
    endEvent: "end",
    json: true,
    credentials: "same-origin",
    initialRetry: 1000,
    maxRetry: 30000,
    maxRetries: Infinity,
  };

  const LINE_END = /\r\n|\r|\n/g;

  /** Incremental parser of the text/event-stream format. */
  class Parser {
    constructor(dispatch, lastEventId) {
      this.dispatch = dispatch;   // (type, dataString, id) => void
      this.onRetry = null;        // (ms) => void
      this.onComment = null;      // (text) => void
      this.lastEventId = lastEventId || "";
      this.buffer = "";
      this.pendingCR = false;     // the previous chunk ended with "\r": a following "\n" belongs to it
      this.resetEvent();
    }

    resetEvent() {
      this.eventType = "";
      this.dataLines = [];
    }

    /** Feed decoded text; complete lines are processed, the rest is kept. */
    push(text) {
      if (!text) return;
      let buf = this.buffer + text;
      let start = 0;
      if (this.pendingCR && buf.charCodeAt(0) === 10) start = 1;
      this.pendingCR = false;
      LINE_END.lastIndex = start;
      let match;
      while ((match = LINE_END.exec(buf)) !== null) {
        // A "\r" at the very end may be the first half of "\r\n".
        const end = match.index;
        this.line(buf.slice(start, end));
        start = end + match[0].length;
        if (match[0] === "\r" && start === buf.length) this.pendingCR = true;
      }
      this.buffer = buf.slice(start);
    }

    line(line) {
      if (line === "") {
        if (this.dataLines.length) {
          const type = this.eventType || "message";
          const data = this.dataLines.join("\n");
          this.resetEvent();
          this.dispatch(type, data, this.lastEventId);
        } else {
          this.resetEvent();
        }
        return;
      }
      if (line.charCodeAt(0) === 58 /* ":" */) {
        if (this.onComment) this.onComment(line.slice(1).trimStart());
        return;
      }
      const colon = line.indexOf(":");
      let field = line;
      let value = "";
      if (colon >= 0) {
        field = line.slice(0, colon);
        value = line.slice(colon + 1);
        if (value.charCodeAt(0) === 32) value = value.slice(1);
      }
      switch (field) {
        case "event":
          this.eventType = value;
          break;
        case "data":
          this.dataLines.push(value);
          break;
        case "id":
          if (value.indexOf("\0") === -1) this.lastEventId = value;
          break;
        case "retry":
          if (/^\d+$/.test(value) && this.onRetry) this.onRetry(parseInt(value, 10));
          break;
        default:
          break; // unknown fields are ignored
      }
    }
  }

  function callSafely(fn, ...args) {
    if (typeof fn !== "function") return undefined;
    try {
      return fn(...args);
    } catch (err) {
      // A broken handler must not kill the stream.
      console.error("procman stream handler failed:", err);
      return undefined;
    }
  }

  async function errorMessage(response) {
    let text = "";
    try {
      text = await response.text();
    } catch (_) {
      /* ignore */
    }
    try {
      const body = JSON.parse(text);
      if (body && body.error) {
        if (typeof body.error === "string") return body.error;
        if (body.error.message) return String(body.error.message);
      }
      if (body && body.message) return String(body.message);
    } catch (_) {
      /* not JSON */
    }
    text = text.trim();
    if (text && text.length < 300 && !text.startsWith("<")) return text;
    return `HTTP ${response.status}${response.statusText ? " " + response.statusText : ""}`;
  }

  function open(url, options) {
    const o = Object.assign({}, DEFAULTS, options || {});
    let controller = null;
    let closed = false;
    let state = "connecting";
    let timer = null;
    let attempt = 0;
    let serverRetry = null;
    let lastEventId = o.lastEventId ? String(o.lastEventId) : "";

    const handle = {
      close,
      /** Drop the current connection (if any) and connect again now. */
      reconnect() {
        if (closed) return;
        clearTimeout(timer);
        if (controller) controller.abort();
        attempt = 0;
        connect();
      },
      get closed() { return closed; },
      get state() { return state; },
      get lastEventId() { return lastEventId; },
      get url() { return url; },
    };

    function close() {
      if (closed) return;
      closed = true;
      state = "closed";
      clearTimeout(timer);
      if (controller) controller.abort();
      callSafely(o.onClose);
    }

    function fail(info) {
      const fatal = !!info.fatal || attempt >= o.maxRetries;
      let retryIn = null;
      if (!fatal && !closed) {
        const base = serverRetry != null ? serverRetry : o.initialRetry;
        const delay = Math.min(o.maxRetry, base * Math.pow(2, attempt));
        retryIn = Math.round(delay * (0.8 + Math.random() * 0.4));
      }
      callSafely(o.onError, Object.assign({ fatal, retryIn }, info, { fatal }));
      if (closed) return;
      if (fatal) {
        close();
        return;
      }
      attempt += 1;
      state = "waiting";
      timer = setTimeout(connect, retryIn);
    }

    function dispatch(type, raw, id) {
      if (closed) return;
      lastEventId = id;
      attempt = 0; // a delivered event proves the connection works
      let data = raw;
      if (o.json) {
        try {
          data = JSON.parse(raw);
        } catch (_) {
          data = raw;
        }
      }
      callSafely(o.onEvent, type, data, id);
      if (o.endEvent && type === o.endEvent && !closed) {
        callSafely(o.onEnd, data);
        close();
      }
    }

    async function connect() {
      if (closed) return;
      state = "connecting";
      controller = new AbortController();
      const mine = controller;
      const headers = new Headers(o.headers || {});
      headers.set("Accept", "text/event-stream");
      const token = typeof o.token === "function" ? o.token() : o.token;
      if (token) headers.set("Authorization", "Bearer " + token);
      if (lastEventId) headers.set("Last-Event-ID", lastEventId);

      let response;
      try {
        response = await fetch(url, {
          method: "GET",
          headers,
          credentials: o.credentials,
          cache: "no-store",
          signal: mine.signal,
        });
      } catch (err) {
        if (closed || mine.signal.aborted) return;
        fail({ kind: "network", status: 0, message: "Cannot reach the server: " + (err && err.message ? err.message : err), error: err });
        return;
      }
      if (closed || mine.signal.aborted) return;

      if (response.status === 204) {
        close();
        return;
      }
      if (!response.ok) {
        const message = await errorMessage(response);
        const transient = response.status >= 500 || response.status === 408 || response.status === 429;
        fail({ kind: "http", status: response.status, message, fatal: !transient });
        return;
      }
      const type = (response.headers.get("Content-Type") || "").toLowerCase();
      if (!type.startsWith("text/event-stream") || !response.body) {
        fail({ kind: "http", status: response.status, message: `Expected an event stream, got ${type || "no content type"}`, fatal: true });
        return;
      }

      state = "open";
      callSafely(o.onOpen, response);
      const parser = new Parser(dispatch, lastEventId);
      parser.onRetry = (ms) => { serverRetry = ms; };
      parser.onComment = (text) => callSafely(o.onComment, text);
      const reader = response.body.getReader();
      const decoder = new TextDecoder("utf-8");
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parser.push(decoder.decode(value, { stream: true }));
          if (closed || mine.signal.aborted) {
            reader.cancel().catch(() => {});
            return;
          }
        }
        parser.push(decoder.decode());
      } catch (err) {
        if (closed || mine.signal.aborted) return;
        fail({ kind: "network", status: 0, message: "The event stream broke off: " + (err && err.message ? err.message : err), error: err });
        return;
      }
      if (closed || mine.signal.aborted) return;
      // The server closed without the end event: resume where we are.
      fail({ kind: "eof", status: response.status, message: "The event stream closed early; reconnecting" });
    }

    connect();
    return handle;
  }

  root.ProcmanStream = { open, Parser, version: "1" };
})(typeof window !== "undefined" ? window : globalThis);

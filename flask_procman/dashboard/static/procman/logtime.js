/*
 * procman logtime.js: when each log line was written, and stdout + stderr interleaved by it.
 *
 * The API sends, with each chunk of output, the entries of the log's time index that time its
 * bytes: [offset, unix time] pairs, "`offset` bytes by `time`". A byte was written by the time of
 * the first entry above it (to about a second); the newest bytes may have none yet, and get it
 * from a later chunk or `times` event. Once known, a byte's time never changes, so an order
 * computed from it is the same after a reload.
 *
 *   const tl = new ProcmanLogTime.Timeline();  tl.add(times);  tl.timeAt(offset)  // seconds or null
 *   const gutter = new ProcmanLogTime.Gutter(tl, "stdout");  // per-stream view: time labels
 *   gutter.label(offset) -> <span class="log-time">;  gutter.refresh();
 *   const merged = new ProcmanLogTime.Merged(pre, {stdout: tl1, stderr: tl2}, {cap});
 *   merged.add(stream, text, offset, cls);  merged.refresh();  merged.settle();  merged.reset();
 */
(function (root) {
  "use strict";

  const encoder = new TextEncoder();
  const fmtClock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  const fmtFull = new Intl.DateTimeFormat(undefined, {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short",
  });

  function byteLength(text) {
    return encoder.encode(text).length;
  }

  /** The index entries of one stream, sorted by offset. */
  class Timeline {
    constructor() {
      this.entries = [];
    }
    reset() {
      this.entries = [];
    }
    get size() {
      return this.entries.length;
    }
    add(times) {
      if (!Array.isArray(times)) return false;
      let changed = false;
      for (const pair of times) {
        if (!Array.isArray(pair) || pair.length < 2) continue;
        const offset = Number(pair[0]);
        const time = Number(pair[1]);
        if (!Number.isFinite(offset) || !Number.isFinite(time)) continue;
        const i = this.search(offset);
        if (i < this.entries.length && this.entries[i][0] === offset) continue;
        this.entries.splice(i, 0, [offset, time]);
        changed = true;
      }
      return changed;
    }
    /** Index of the first entry whose offset is >= `offset`. */
    search(offset) {
      let lo = 0;
      let hi = this.entries.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (this.entries[mid][0] < offset) lo = mid + 1;
        else hi = mid;
      }
      return lo;
    }
    /** By when the byte at `offset` was written (seconds since the epoch), or null while unknown. */
    timeAt(offset) {
      const i = this.search(offset + 1);
      return i < this.entries.length ? this.entries[i][1] : null;
    }
  }

  function label(node, time) {
    if (time == null) {
      node.textContent = "";
      node.title = "time not known yet";
      return;
    }
    const date = new Date(time * 1000);
    node.textContent = fmtClock.format(date);
    node.title = `written by ${fmtFull.format(date)}`;
  }

  /** Time labels for the lines of one stream's view. */
  class Gutter {
    constructor(timeline) {
      this.timeline = timeline;
      this.waiting = [];
    }
    reset() {
      this.waiting = [];
    }
    label(offset) {
      const node = document.createElement("span");
      node.className = "log-time";
      node.setAttribute("aria-hidden", "true");
      node.dataset.offset = String(offset);
      const time = this.timeline.timeAt(offset);
      label(node, time);
      if (time == null) this.waiting.push(node);
      return node;
    }
    refresh() {
      if (!this.waiting.length) return;
      this.waiting = this.waiting.filter((node) => {
        if (!node.isConnected) return false;
        const time = this.timeline.timeAt(Number(node.dataset.offset));
        if (time == null) return true;
        label(node, time);
        return false;
      });
    }
  }

  /** Split `text` (bytes [offset, ...) of a stream) into pieces; a piece that starts a line has its byte offset. */
  function pieces(text, offset, atLineStart) {
    const out = [];
    let pos = 0;
    let byte = offset;
    let lineStart = atLineStart;
    while (pos < text.length) {
      const newline = text.indexOf("\n", pos);
      const end = newline === -1 ? text.length : newline + 1;
      const part = text.slice(pos, end);
      out.push({ text: part, start: lineStart ? byte : null, complete: newline !== -1 });
      byte += byteLength(part);
      lineStart = newline !== -1;
      pos = end;
    }
    return { pieces: out, atLineStart: lineStart, next: byte };
  }

  const ORDER = { stdout: 0, stderr: 1 };

  /**
   * stdout and stderr interleaved by the time of each line, then stream (stdout first), then offset.
   * A line is shown once its time is known (at the latest when `settle()` is called at the end).
   */
  class Merged {
    constructor(pre, timelines, options) {
      this.pre = pre;
      this.timelines = timelines;
      this.cap = (options && options.cap) || 2 * 1024 * 1024;
      this.clean = (options && options.clean) || ((text) => text);
      this.reset();
    }
    reset() {
      this.pre.textContent = "";
      this.lines = [];                              // shown, sorted by key
      this.waiting = { stdout: [], stderr: [] };    // not timed yet, in stream order
      this.open = { stdout: null, stderr: null };   // the line still being written, per stream
      this.atLineStart = { stdout: true, stderr: true };
      this.chars = 0;
      this.dropped = 0;
    }
    get pending() {
      return this.waiting.stdout.length + this.waiting.stderr.length;
    }
    add(stream, text, offset, cls) {
      if (!text || !(stream in ORDER)) return;
      const split = pieces(text, offset, this.atLineStart[stream]);
      this.atLineStart[stream] = split.atLineStart;
      for (const piece of split.pieces) {
        let line = piece.start == null ? this.open[stream] : null;
        if (!line) {
          line = { stream, offset: piece.start == null ? offset : piece.start, time: null, node: null, text: "", cls };
          this.waiting[stream].push(line);
        }
        const shown = this.clean(piece.text);
        line.text += shown;
        if (line.node) {
          line.node.lastChild.appendData(shown);
          this.chars += shown.length;
        }
        this.open[stream] = piece.complete ? null : line;
      }
      this.refresh();
    }
    /** Show the lines whose time became known (they keep that place for good). */
    refresh(force) {
      for (const stream of Object.keys(this.waiting)) {
        const queue = this.waiting[stream];
        while (queue.length) {
          const line = queue[0];
          let time = this.timelines[stream].timeAt(line.offset);
          if (time == null && !force) break;
          if (time == null) time = Infinity;  // no index (an old run): after the timed lines, in stream order
          queue.shift();
          line.time = time;
          this.insert(line);
        }
      }
      this.enforceCap();
    }
    /** The run has ended and its index is complete: show what is still waiting. */
    settle() {
      this.refresh(true);
    }
    key(line) {
      return [line.time, ORDER[line.stream], line.offset];
    }
    before(a, b) {
      const x = this.key(a);
      const y = this.key(b);
      for (let i = 0; i < 3; i++) {
        if (x[i] !== y[i]) return x[i] < y[i];
      }
      return false;
    }
    insert(line) {
      let lo = 0;
      let hi = this.lines.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (this.before(line, this.lines[mid])) hi = mid;
        else lo = mid + 1;
      }
      const node = document.createElement("span");
      node.className = "log-line" + (line.stream === "stderr" ? " log-stderr-line" : "") + (line.cls ? ` ${line.cls}` : "");
      node.dataset.stream = line.stream;
      const gutter = document.createElement("span");
      gutter.className = "log-time";
      gutter.setAttribute("aria-hidden", "true");
      label(gutter, Number.isFinite(line.time) ? line.time : null);
      node.appendChild(gutter);
      node.appendChild(document.createTextNode(line.text));
      line.node = node;
      const after = this.lines[lo];
      this.pre.insertBefore(node, after ? after.node : null);
      this.lines.splice(lo, 0, line);
      this.chars += line.text.length;
    }
    enforceCap() {
      while (this.chars > this.cap && this.lines.length > 1) {
        const line = this.lines.shift();
        line.node.remove();
        this.chars -= line.text.length;
        this.dropped += line.text.length;
        if (this.open[line.stream] === line) this.open[line.stream] = null;
      }
    }
  }

  root.ProcmanLogTime = { Timeline, Gutter, Merged, pieces, byteLength };
})(typeof window !== "undefined" ? window : globalThis);

// wsgate.js: the browser client of wsgate. A WebSocket when the browser and the network allow
// one, otherwise wsgate's fallback transport over plain HTTP requests, behind the same API.
//
// Served by the gateway itself at /wsgate.js. Plain JavaScript, no build step, no dependencies;
// load it as a classic script and it defines window.WsgateSocket:
//
//   <script src="/wsgate.js"></script>
//   <script>
//     const ws = new WsgateSocket('/chat');        // or 'wss://host/chat', 'https://host/chat'
//     ws.binaryType = 'arraybuffer';                // or 'blob' (the default)
//     ws.onopen = () => ws.send('hello');
//     ws.onmessage = (e) => console.log('received', e.data);
//     ws.onclose = (e) => console.log('closed', e.code, e.reason, e.wasClean);
//     ws.addEventListener('transport', () => console.log('now over', ws.transport));
//   </script>
//
// new WsgateSocket(url, protocols?, options?) has the shape of WebSocket: readyState and the
// constants CONNECTING OPEN CLOSING CLOSED, url, protocol, extensions, binaryType,
// bufferedAmount, send(data) (string, ArrayBuffer, typed array, DataView, Blob),
// close(code?, reason?), the events open, message, error and close, and onopen, onmessage,
// onerror, onclose. It adds `transport` ("websocket", "streaming" or "polling": the one in use,
// or being tried while connecting) and a `transport` event whenever that changes.
//
// Options:
//   transports     the transports to try, in order (default ["websocket", "streaming",
//                  "polling"]). "websocket" is skipped when the browser has no WebSocket.
//   timeout        ms a WebSocket may take to open before the fallback is tried (default 5000).
//   streamTimeout  ms a stream may take to deliver its first heartbeat; a stream held back by a
//                  buffering proxy is abandoned for polling (default 3000).
//
// How it connects: a WebSocket first; if that fails or times out before it opens (Upgrade
// stripped by a proxy, WebSocket missing or blocked), one `open` request to the same URL over
// http(s) starts a fallback session on the gateway (the route needs `fallback = true`). Messages
// from the server then arrive on a long streaming response, or by long polling when the stream
// is cut or buffered on the way; messages to the server are POSTed, one request at a time, each
// numbered so that a retried request delivers nothing twice. Failed requests are retried a
// bounded number of times with backoff, with the same acknowledgement and sequence numbers, so
// nothing is lost or repeated; when the retries run out, `error` then `close` (1006) fire, as
// for a WebSocket whose connection dropped. Fallback requests are same-origin only (they carry
// a custom header, which the gateway never allows cross-site).
//
// The wire protocol (version 1) is described in wsgate's README ("Fallback transport").

(function (global) {
  'use strict';

  const CONNECTING = 0;
  const OPEN = 1;
  const CLOSING = 2;
  const CLOSED = 3;

  // Record types of the fallback protocol: type (u8), length (u32 big-endian), payload.
  const REC_TEXT = 0x01;
  const REC_BINARY = 0x02;
  const REC_CLOSE = 0x08;
  const REC_HEARTBEAT = 0x09;
  const HEADER_LEN = 5;

  const TRANSPORTS = ['websocket', 'streaming', 'polling'];
  // Delays before the retries of a failed request; one more failure ends the session.
  const RETRY_DELAYS_MS = [250, 500, 1000, 2000, 4000];
  // HTTP statuses worth a retry (a proxy or a restarting gateway); any other non-200 is final.
  const RETRY_STATUSES = new Set([502, 503, 504]);
  // How long after close() the server's close record may take before the socket is closed
  // anyway (not cleanly).
  const CLOSE_TIMEOUT_MS = 10000;

  const encoder = new TextEncoder();

  // A final failure of the session (a refusal, a protocol error, retries run out).
  class Failure extends Error {}

  // Accumulates received bytes and hands out complete records.
  class RecordReader {
    constructor(maxLength) {
      this.maxLength = maxLength;
      this.chunks = [];
      this.buffered = 0;
    }

    push(chunk) {
      if (chunk.length > 0) {
        this.chunks.push(chunk);
        this.buffered += chunk.length;
      }
    }

    // Bytes of an incomplete record held back.
    get pending() {
      return this.buffered;
    }

    // The next complete record as {type, payload}, or null until more bytes arrive.
    next() {
      if (this.buffered < HEADER_LEN) return null;
      const head = this.peek(HEADER_LEN);
      const type = head[0];
      const length = new DataView(head.buffer, head.byteOffset, HEADER_LEN).getUint32(1);
      if (length > this.maxLength) {
        throw new Failure('record of ' + length + ' bytes exceeds the limit');
      }
      if (this.buffered < HEADER_LEN + length) return null;
      this.take(HEADER_LEN);
      return { type: type, payload: this.take(length) };
    }

    // The first n buffered bytes (n <= buffered), left in place.
    peek(n) {
      if (this.chunks[0].length >= n) return this.chunks[0].subarray(0, n);
      const out = new Uint8Array(n);
      let at = 0;
      for (const c of this.chunks) {
        const part = c.subarray(0, n - at);
        out.set(part, at);
        at += part.length;
        if (at === n) break;
      }
      return out;
    }

    // Remove and return the first n buffered bytes (n <= buffered), in a buffer of their own.
    take(n) {
      const out = new Uint8Array(n);
      let at = 0;
      while (at < n) {
        const c = this.chunks[0];
        const part = c.subarray(0, n - at);
        out.set(part, at);
        at += part.length;
        if (part.length === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(part.length);
      }
      this.buffered -= n;
      return out;
    }
  }

  // The records of `items` ({type, bytes}) as one request body.
  function encodeRecords(items) {
    let total = 0;
    for (const item of items) total += HEADER_LEN + item.bytes.length;
    const body = new Uint8Array(total);
    const view = new DataView(body.buffer);
    let at = 0;
    for (const item of items) {
      body[at] = item.type;
      view.setUint32(at + 1, item.bytes.length);
      body.set(item.bytes, at + HEADER_LEN);
      at += HEADER_LEN + item.bytes.length;
    }
    return body;
  }

  // A WebSocket Close frame body: optional code (u16 big-endian) and UTF-8 reason.
  function closePayload(code, reasonBytes) {
    if (code === undefined) return new Uint8Array(0);
    const out = new Uint8Array(2 + reasonBytes.length);
    new DataView(out.buffer).setUint16(0, code);
    out.set(reasonBytes, 2);
    return out;
  }

  function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
  }

  function closeEvent(code, reason, wasClean) {
    if (typeof CloseEvent === 'function') {
      return new CloseEvent('close', { code: code, reason: reason, wasClean: wasClean });
    }
    const e = new Event('close');
    Object.assign(e, { code: code, reason: reason, wasClean: wasClean });
    return e;
  }

  class WsgateSocket extends EventTarget {
    constructor(url, protocols, options) {
      super();
      if (url === undefined) throw new TypeError('WsgateSocket: a URL is required');
      const base = global.location ? global.location.href : undefined;
      let parsed;
      try {
        parsed = new URL(String(url), base);
      } catch (e) {
        throw new DOMException('WsgateSocket: invalid URL ' + url, 'SyntaxError');
      }
      const wsScheme = { 'http:': 'ws:', 'https:': 'wss:', 'ws:': 'ws:', 'wss:': 'wss:' };
      if (!wsScheme[parsed.protocol]) {
        throw new DOMException('WsgateSocket: the URL scheme must be ws, wss, http or https', 'SyntaxError');
      }
      if (parsed.hash) {
        throw new DOMException('WsgateSocket: the URL must not have a fragment', 'SyntaxError');
      }
      const secure = wsScheme[parsed.protocol] === 'wss:';
      parsed.protocol = secure ? 'wss:' : 'ws:';
      this._url = parsed.href;
      parsed.protocol = secure ? 'https:' : 'http:';
      this._httpUrl = parsed.href;

      if (protocols === undefined || protocols === null) protocols = [];
      else if (typeof protocols === 'string') protocols = [protocols];
      else protocols = Array.from(protocols, String);
      if (new Set(protocols).size !== protocols.length ||
          protocols.some((p) => !/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(p))) {
        throw new DOMException('WsgateSocket: invalid or repeated subprotocol', 'SyntaxError');
      }
      this._protocols = protocols;

      options = options || {};
      const transports = options.transports === undefined ? TRANSPORTS : Array.from(options.transports);
      if (transports.length === 0 || transports.some((t) => !TRANSPORTS.includes(t))) {
        throw new TypeError('WsgateSocket: transports must be a list of ' + TRANSPORTS.join(', '));
      }
      this._transports = transports;
      this._timeout = options.timeout === undefined ? 5000 : Number(options.timeout);
      this._streamTimeout = options.streamTimeout === undefined ? 3000 : Number(options.streamTimeout);

      this._readyState = CONNECTING;
      this._protocol = '';
      this._extensions = '';
      this._binaryType = 'blob';
      this._transport = '';
      this._handlers = {};
      this._ws = null; // the WebSocket, once it is the transport
      this._attempt = null; // the WebSocket being tried
      this._origin = new URL(this._url).origin; // MessageEvent.origin, as WebSocket gives it

      // Fallback session state.
      this._session = null;
      this._stopped = false; // set once: every loop and request ends
      this._controllers = new Set(); // AbortControllers of the requests under way
      this._timers = new Set();
      this._ack = 0; // server->client messages received completely
      this._nextSeq = 0; // number of the next client->server message
      this._queue = []; // messages not yet acknowledged by the server, in order
      this._buffered = 0; // their bytes
      this._discarded = 0; // bytes of send() calls made after close(), never sent
      this._sending = false;
      this._pollTimeout = 25000;
      this._maxMessage = 1048576;

      this._start();
    }

    get url() { return this._url; }
    get readyState() { return this._ws ? this._ws.readyState : this._readyState; }
    get protocol() { return this._protocol; }
    get extensions() { return this._extensions; }
    get transport() { return this._transport; }
    get bufferedAmount() {
      return this._ws ? this._ws.bufferedAmount : this._buffered + this._discarded;
    }
    get binaryType() { return this._binaryType; }
    set binaryType(value) {
      if (value !== 'blob' && value !== 'arraybuffer') return; // ignored, as WebSocket does
      this._binaryType = value;
      if (this._ws) this._ws.binaryType = value;
    }

    send(data) {
      if (this._ws) {
        this._ws.send(data);
        return;
      }
      if (this._readyState === CONNECTING) {
        throw new DOMException("Failed to execute 'send' on 'WsgateSocket': Still in CONNECTING state.",
          'InvalidStateError');
      }
      let item;
      if (typeof data === 'string') {
        item = { type: REC_TEXT, bytes: encoder.encode(data) };
      } else if (data instanceof ArrayBuffer) {
        item = { type: REC_BINARY, bytes: new Uint8Array(data.slice(0)) };
      } else if (ArrayBuffer.isView(data)) {
        item = { type: REC_BINARY, bytes: new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)) };
      } else if (typeof Blob === 'function' && data instanceof Blob) {
        // Read before sending, in order with the messages around it.
        item = { type: REC_BINARY, bytes: null, blob: data.arrayBuffer(), size: data.size };
      } else {
        item = { type: REC_TEXT, bytes: encoder.encode(String(data)) };
      }
      const size = item.bytes ? item.bytes.length : item.size;
      if (this._readyState !== OPEN) {
        // Like WebSocket after close(): counted, never sent.
        this._discarded += size;
        return;
      }
      item.size = size;
      item.seq = this._nextSeq++;
      this._queue.push(item);
      this._buffered += size;
      this._flush();
    }

    close(code, reason) {
      if (code !== undefined) {
        code = Number(code);
        if (!(code === 1000 || (code >= 3000 && code <= 4999)) || !Number.isInteger(code)) {
          throw new DOMException('WsgateSocket: close code must be 1000 or in 3000-4999', 'InvalidAccessError');
        }
      }
      const reasonBytes = encoder.encode(reason === undefined ? '' : String(reason));
      if (reasonBytes.length > 123) {
        throw new DOMException('WsgateSocket: close reason longer than 123 bytes', 'SyntaxError');
      }
      if (this._ws) {
        this._ws.close(code, reason);
        return;
      }
      if (this._readyState === CLOSING || this._readyState === CLOSED) return;
      if (this._readyState === CONNECTING) {
        // As WebSocket: closing before the connection opened fails it (error, then close 1006).
        this._readyState = CLOSING;
        this._stop();
        if (this._attempt) this._attempt.close();
        setTimeout(() => this._fail(), 0);
        return;
      }
      this._readyState = CLOSING;
      const bytes = closePayload(code, reasonBytes);
      this._queue.push({ type: REC_CLOSE, bytes: bytes, size: 0, seq: this._nextSeq++ });
      this._flush();
      this._later(() => this._finish(1006, '', false), CLOSE_TIMEOUT_MS);
    }

    // -------------------------------------------------------------------------------------------
    // Events

    _emit(event) {
      this.dispatchEvent(event);
    }

    _setTransport(name) {
      if (this._transport === name) return;
      this._transport = name;
      this._emit(new CustomEvent('transport', { detail: name }));
    }

    // After a final failure: error, then close 1006 (not clean).
    _fail() {
      if (this._readyState === CLOSED) return;
      this._stop();
      this._readyState = CLOSED;
      this._emit(new Event('error'));
      this._emit(closeEvent(1006, '', false));
    }

    // The session is over: close with `code`.
    _finish(code, reason, wasClean) {
      if (this._readyState === CLOSED) return;
      this._stop();
      this._readyState = CLOSED;
      this._emit(closeEvent(code, reason, wasClean));
    }

    // End every request, loop and timer of the fallback session.
    _stop() {
      this._stopped = true;
      for (const c of this._controllers) c.abort();
      this._controllers.clear();
      for (const t of this._timers) clearTimeout(t);
      this._timers.clear();
    }

    _later(fn, ms) {
      const t = setTimeout(() => {
        this._timers.delete(t);
        fn();
      }, ms);
      this._timers.add(t);
      return t;
    }

    // -------------------------------------------------------------------------------------------
    // Connecting: WebSocket first, then the fallback

    _start() {
      const rest = this._transports.filter((t) => t !== 'websocket');
      if (this._transports.includes('websocket') && typeof global.WebSocket === 'function') {
        this._transport = 'websocket';
        this._tryWebSocket(rest);
      } else if (rest.length > 0) {
        this._transport = rest[0];
        this._openFallback(rest);
      } else {
        setTimeout(() => this._fail(), 0);
      }
    }

    _tryWebSocket(rest) {
      let ws;
      try {
        ws = new global.WebSocket(this._url, this._protocols);
      } catch (e) {
        setTimeout(() => this._fallBack(rest), 0);
        return;
      }
      ws.binaryType = this._binaryType;
      this._attempt = ws;
      let settled = false;
      const giveUp = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this._attempt = null;
        ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
        try {
          ws.close();
        } catch (e) {
          // already closed
        }
        this._fallBack(rest);
      };
      const timer = setTimeout(giveUp, this._timeout);
      ws.onerror = giveUp;
      ws.onclose = giveUp;
      ws.onopen = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this._attempt = null;
        if (this._readyState !== CONNECTING) {
          // close() was called meanwhile.
          ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
          ws.close();
          return;
        }
        this._ws = ws;
        ws.binaryType = this._binaryType; // as set while it was connecting
        this._protocol = ws.protocol;
        this._extensions = ws.extensions;
        ws.onmessage = (e) => this._emit(new MessageEvent('message', { data: e.data, origin: e.origin }));
        ws.onerror = () => this._emit(new Event('error'));
        ws.onclose = (e) => {
          this._readyState = CLOSED;
          this._emit(closeEvent(e.code, e.reason, e.wasClean));
        };
        this._readyState = OPEN;
        this._emit(new Event('open'));
      };
    }

    _fallBack(rest) {
      if (this._readyState !== CONNECTING) return; // close() was called meanwhile
      if (rest.length === 0) {
        this._fail();
        return;
      }
      this._setTransport(rest[0]);
      this._openFallback(rest);
    }

    // The `open` request, then the down loop.
    async _openFallback(down) {
      this._down = down;
      this._mode = down[0];
      const headers = { 'Wsgate-Fallback': 'open', 'Wsgate-Transport': this._mode };
      let info;
      try {
        // Only an unanswered request is retried: any answer but 200 is a refusal, as it would
        // be for a WebSocket handshake.
        const res = await this._request('POST', headers, undefined, { retryStatuses: false });
        info = await res.json();
      } catch (e) {
        if (!this._stopped) this._fail();
        return;
      }
      if (this._stopped) return;
      if (!info || typeof info.session !== 'string' || info.session === '') {
        this._fail();
        return;
      }
      this._session = info.session;
      this._protocol = typeof info.protocol === 'string' ? info.protocol : '';
      if (Number.isFinite(info.poll_timeout_ms) && info.poll_timeout_ms > 0) this._pollTimeout = info.poll_timeout_ms;
      if (Number.isFinite(info.max_message_size) && info.max_message_size > 0) this._maxMessage = info.max_message_size;
      this._readyState = OPEN;
      this._emit(new Event('open'));
      this._downLoop();
      this._flush();
    }

    // -------------------------------------------------------------------------------------------
    // Requests

    _headers(extra) {
      const h = Object.assign({}, extra);
      if (this._session) h['Wsgate-Session'] = this._session;
      // On every request: a route may read its credential from the offered subprotocols.
      if (this._protocols.length > 0) h['Wsgate-Protocol'] = this._protocols.join(', ');
      return h;
    }

    // One fetch to the route's URL. `timeoutMs` (optional) aborts it, reading its body included,
    // unless the caller calls the returned `done()` first; `rearm(ms)` restarts that timer.
    async _fetch(method, headers, body, timeoutMs) {
      const controller = new AbortController();
      this._controllers.add(controller);
      let timer = null;
      if (timeoutMs !== undefined) timer = setTimeout(() => controller.abort(), timeoutMs);
      // Finished with the request: its timer stopped, whatever is left of its body dropped.
      const done = () => {
        if (timer !== null) clearTimeout(timer);
        this._controllers.delete(controller);
        controller.abort();
      };
      const rearm = (ms) => {
        if (timer !== null) clearTimeout(timer);
        timer = setTimeout(() => controller.abort(), ms);
      };
      try {
        const res = await fetch(this._httpUrl, {
          method: method,
          headers: this._headers(headers),
          body: body,
          cache: 'no-store',
          credentials: 'same-origin',
          // Keeps the Origin header of a POST even on a page whose policy is no-referrer.
          referrerPolicy: 'origin',
          redirect: 'error',
          signal: controller.signal,
        });
        return { res: res, done: done, rearm: rearm };
      } catch (e) {
        done();
        throw e;
      }
    }

    // A request whose whole answer is read by the caller: retried with backoff when it gets no
    // answer (or, with retryStatuses, a 502/503/504 from a proxy). Throws Failure when retries
    // run out or the answer is a refusal.
    async _request(method, headers, body, opts) {
      for (let attempt = 0; ; attempt++) {
        if (this._stopped) throw new Failure('stopped');
        let status = 0;
        try {
          const f = await this._fetch(method, headers, body, opts.timeout);
          try {
            if (f.res.ok) {
              const bytes = await f.res.arrayBuffer();
              return { json: () => Promise.resolve(JSON.parse(new TextDecoder().decode(bytes))) };
            }
            status = f.res.status;
          } finally {
            f.done();
          }
        } catch (e) {
          // No answer (network error, cut, timeout): retried.
        }
        if (status !== 0 && !(opts.retryStatuses && RETRY_STATUSES.has(status))) {
          throw new Failure('HTTP ' + status);
        }
        if (attempt >= RETRY_DELAYS_MS.length) throw new Failure('no answer');
        await sleep(RETRY_DELAYS_MS[attempt]);
      }
    }

    // -------------------------------------------------------------------------------------------
    // Server -> client

    async _downLoop() {
      let failures = 0;
      while (!this._stopped) {
        let outcome;
        try {
          outcome = this._mode === 'streaming' ? await this._stream() : await this._poll();
        } catch (e) {
          // A refusal or a protocol error.
          this._fail();
          return;
        }
        if (this._stopped || outcome === 'over') return;
        if (outcome === 'ok') {
          // A poll answered, or a stream that ended cleanly after delivering messages (the
          // gateway ends a stream that carried half its buffer, to be acknowledged): again.
          failures = 0;
          continue;
        }
        // A stream cut, held back by a proxy or refused on the way: polling, if allowed.
        if (this._mode === 'streaming' && this._down.includes('polling')) {
          this._mode = 'polling';
          this._setTransport('polling');
          continue;
        }
        if (outcome === 'cut') {
          // The stream worked for a while: open a new one.
          failures = 0;
          continue;
        }
        if (failures >= RETRY_DELAYS_MS.length) {
          this._fail();
          return;
        }
        await sleep(RETRY_DELAYS_MS[failures++]);
      }
    }

    // One streaming request. Returns 'over' (the session ended), 'ok' (it ended cleanly, between
    // records, after delivering messages), 'cut' (it worked, then broke or went silent), 'failed'
    // (no heartbeat in time, no answer, or a proxy's error); throws Failure on a refusal.
    async _stream() {
      const records = new RecordReader(this._maxMessage + 64);
      const ackBefore = this._ack;
      let heard = false;
      let f;
      try {
        f = await this._fetch('POST', { 'Wsgate-Fallback': 'stream', 'Wsgate-Ack': String(this._ack) },
          undefined, this._streamTimeout);
      } catch (e) {
        return 'failed';
      }
      try {
        if (!f.res.ok) {
          if (RETRY_STATUSES.has(f.res.status)) return 'failed';
          throw new Failure('stream: HTTP ' + f.res.status);
        }
        const reader = f.res.body.getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (this._stopped) return 'over';
          if (done) {
            if (this._ack > ackBefore && records.pending === 0) return 'ok';
            return heard ? 'cut' : 'failed';
          }
          records.push(value);
          let rec;
          while ((rec = records.next()) !== null) {
            heard = true;
            if (this._onRecord(rec)) return 'over';
          }
          // Alive while heartbeats come; a silent stream is a cut one.
          if (heard) f.rearm(this._pollTimeout * 1.5 + 5000);
        }
      } catch (e) {
        if (e instanceof Failure) throw e;
        if (this._stopped) return 'over';
        return heard ? 'cut' : 'failed';
      } finally {
        f.done();
      }
    }

    // One long poll. Returns 'over', 'ok' or 'failed'; throws Failure on a refusal.
    async _poll() {
      const records = new RecordReader(this._maxMessage + 64);
      let f;
      try {
        f = await this._fetch('POST', { 'Wsgate-Fallback': 'poll', 'Wsgate-Ack': String(this._ack) },
          undefined, this._pollTimeout + 15000);
      } catch (e) {
        return 'failed';
      }
      try {
        if (!f.res.ok) {
          if (RETRY_STATUSES.has(f.res.status)) return 'failed';
          throw new Failure('poll: HTTP ' + f.res.status);
        }
        const reader = f.res.body.getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (this._stopped) return 'over';
          if (done) break;
          records.push(value);
          let rec;
          while ((rec = records.next()) !== null) {
            if (this._onRecord(rec)) return 'over';
          }
        }
        // An incomplete last record: the answer was cut; the next poll asks for it again.
        return records.pending === 0 ? 'ok' : 'failed';
      } catch (e) {
        if (e instanceof Failure) throw e;
        if (this._stopped) return 'over';
        return 'failed';
      } finally {
        f.done();
      }
    }

    // One record from the server; true when the session is over.
    _onRecord(rec) {
      const payload = rec.payload;
      switch (rec.type) {
        case REC_HEARTBEAT:
          return false;
        case REC_TEXT: {
          this._ack++;
          let text;
          try {
            text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(payload);
          } catch (e) {
            throw new Failure('invalid UTF-8 in a text message');
          }
          if (this._readyState === OPEN) this._emit(new MessageEvent('message', { data: text, origin: this._origin }));
          return this._stopped;
        }
        case REC_BINARY: {
          this._ack++;
          if (this._readyState === OPEN) {
            const data = this._binaryType === 'arraybuffer' ? payload.buffer : new Blob([payload]);
            this._emit(new MessageEvent('message', { data: data, origin: this._origin }));
          }
          return this._stopped;
        }
        case REC_CLOSE: {
          this._ack++;
          let code = 1005;
          let reason = '';
          if (payload.length >= 2) {
            code = new DataView(payload.buffer, payload.byteOffset).getUint16(0);
            reason = new TextDecoder('utf-8', { ignoreBOM: true }).decode(payload.subarray(2));
          }
          this._finish(code, reason, true);
          this._acknowledgeClose();
          return true;
        }
        default:
          throw new Failure('unknown record type ' + rec.type);
      }
    }

    // Tell the gateway that its close record arrived (one more down request acknowledging it),
    // so that it forgets the session at once instead of after fallback_session_timeout. Only
    // the answer's head is awaited; nothing depends on it.
    _acknowledgeClose() {
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), this._pollTimeout + 5000);
      const kind = this._mode === 'streaming' ? 'stream' : 'poll';
      fetch(this._httpUrl, {
        method: 'POST',
        headers: this._headers({ 'Wsgate-Fallback': kind, 'Wsgate-Ack': String(this._ack) }),
        cache: 'no-store',
        credentials: 'same-origin',
        referrerPolicy: 'origin',
        redirect: 'error',
        signal: controller.signal,
      }).catch(() => {}).finally(() => {
        clearTimeout(timer);
        controller.abort();
      });
    }

    // -------------------------------------------------------------------------------------------
    // Client -> server

    // Send what is queued, one request at a time, until the queue is empty.
    async _flush() {
      if (this._sending || this._session === null) return;
      this._sending = true;
      try {
        let stalls = 0;
        while (!this._stopped && this._queue.length > 0) {
          // The oldest unacknowledged messages, at most max_message_size bytes (at least one).
          const batch = [];
          let total = 0;
          for (const item of this._queue) {
            if (batch.length > 0 && total + HEADER_LEN + item.size > this._maxMessage) break;
            batch.push(item);
            total += HEADER_LEN + item.size;
          }
          for (const item of batch) {
            if (item.bytes === null) item.bytes = new Uint8Array(await item.blob);
          }
          if (this._stopped) return;
          const seq = batch[0].seq;
          const res = await this._request('POST', {
            'Wsgate-Fallback': 'send',
            'Wsgate-Seq': String(seq),
            'Content-Type': 'application/octet-stream',
          }, encodeRecords(batch), { retryStatuses: true });
          const answer = await res.json();
          const ack = answer ? answer.ack : undefined;
          if (!Number.isInteger(ack) || ack < seq || ack > this._nextSeq) {
            throw new Failure('send: acknowledgement out of range');
          }
          if (ack === seq) {
            // Nothing taken: back off, boundedly.
            if (stalls >= RETRY_DELAYS_MS.length) throw new Failure('send: nothing acknowledged');
            await sleep(RETRY_DELAYS_MS[stalls++]);
            continue;
          }
          stalls = 0;
          while (this._queue.length > 0 && this._queue[0].seq < ack) {
            this._buffered -= this._queue.shift().size;
          }
        }
      } catch (e) {
        if (!this._stopped) this._fail();
      } finally {
        this._sending = false;
      }
    }
  }

  // on<event> handler properties, as on WebSocket.
  for (const type of ['open', 'message', 'error', 'close']) {
    Object.defineProperty(WsgateSocket.prototype, 'on' + type, {
      get() {
        const h = this._handlers[type];
        return h ? h.fn : null;
      },
      set(fn) {
        const old = this._handlers[type];
        if (old) this.removeEventListener(type, old.listener);
        if (typeof fn !== 'function') {
          delete this._handlers[type];
          return;
        }
        const listener = (e) => fn.call(this, e);
        this._handlers[type] = { fn: fn, listener: listener };
        this.addEventListener(type, listener);
      },
      configurable: true,
      enumerable: true,
    });
  }

  for (const [name, value] of [['CONNECTING', CONNECTING], ['OPEN', OPEN], ['CLOSING', CLOSING], ['CLOSED', CLOSED]]) {
    Object.defineProperty(WsgateSocket, name, { value: value, enumerable: true });
    Object.defineProperty(WsgateSocket.prototype, name, { value: value, enumerable: true });
  }

  global.WsgateSocket = WsgateSocket;
})(typeof window !== 'undefined' ? window : globalThis);

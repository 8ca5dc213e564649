'use strict';
// Load generator of benchmarks/run.py, on Node's `ws` (installed by run.py
// into benchmarks/.work/). One process, one event loop: it keeps one core
// at most, and reports its own CPU time so run.py can show that it is not
// the bottleneck.
//
//   node load.js '<json config>'
//
// Writes one JSON object per line on stdout:
//   {"event":"connected",...}  all clients are open (echo, pipeline, broadcast)
//   {"event":"start"}          the measurement window begins (after warm-up)
//   {"event":"result",...}     the window ended: ops, seconds, cpu_user_s, cpu_system_s
//   {"event":"progress"|"held"|"closed",...}  idle mode
//   {"event":"error","message":...}  then exit code 1
// Every loop is bounded in time (cfg.duration, cfg.timeout) and in count (cfg.max_ops).
// Reads lines on stdin (idle mode): "stop" (stop opening connections) and, with
// cfg.wait_go, "go" (start the hold: every generator of a run holds together).

const path = require('path');
const net = require('net');
const WebSocket = require(path.join(__dirname, '.work', 'node_modules', 'ws'));

const cfg = JSON.parse(process.argv[2]);
const WS_OPTIONS = { perMessageDeflate: !!cfg.compression, handshakeTimeout: 15000, maxPayload: 64 * 1024 * 1024 };

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}
function now() {
  return Number(process.hrtime.bigint()) / 1e9;
}
function fail(message) {
  out({ event: 'error', message });
  process.exit(1);
}

// Whole-process watchdog: nothing runs longer than cfg.timeout seconds.
setTimeout(() => fail(`watchdog: no result within ${cfg.timeout} s`), cfg.timeout * 1000).unref();

let stdinBuf = '';
let stopRequested = false;
let onGo = null; // idle mode with cfg.wait_go: starts the hold once "go" comes
process.stdin.on('data', (chunk) => {
  stdinBuf += chunk.toString();
  if (stdinBuf.includes('stop')) stopRequested = true;
  if (onGo && stdinBuf.split('\n').includes('go')) {
    const go = onGo;
    onGo = null;
    go();
  }
});
process.stdin.on('error', () => {});

function payload(size, fill) {
  if (cfg.words) return words(size);
  return Buffer.alloc(size, fill || 'a');
}

// Compressible but not trivial text (for the deflate scenarios): words drawn
// by a fixed pseudo-random sequence, so every run sends the same bytes.
function words(size) {
  const vocabulary = ('the of and to in is was for on that with as by at from his her an which or be are this had not ' +
    'message server client socket thread frame buffer kernel deflate window stream event listener request response ' +
    '{"id": "value": "type": "update", "time": 1700000000, "ok": true, "items": [1, 2, 3]}').split(' ');
  let seed = 12345;
  let text = '';
  while (text.length < size) {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff;
    text += vocabulary[seed % vocabulary.length] + ' ';
  }
  return Buffer.from(text.slice(0, size), 'latin1');
}

// Open `n` connections, at most `concurrency` handshakes at a time.
function openMany(n, concurrency, setup) {
  return new Promise((resolve, reject) => {
    const sockets = [];
    let started = 0;
    let opened = 0;
    let failed = false;
    function next() {
      if (failed || started >= n) return;
      const index = started++;
      const ws = new WebSocket(cfg.url, WS_OPTIONS);
      sockets[index] = ws;
      setup(ws, index);
      ws.once('open', () => {
        opened++;
        if (opened === n) resolve(sockets);
        else next();
      });
      ws.once('error', (err) => {
        if (ws.readyState !== WebSocket.OPEN && !failed) {
          failed = true;
          reject(new Error(`connection ${index} failed: ${err.message}`));
        }
      });
    }
    for (let i = 0; i < Math.min(concurrency, n); i++) next();
  });
}

// A measurement window: warm-up, then `duration` seconds or `max_ops` ops.
function makeWindow(onEnd) {
  const w = { measuring: false, stopped: false, ops: 0, bytes: 0, t0: 0, cpu0: null };
  w.begin = () => {
    setTimeout(() => {
      w.ops = 0;
      w.bytes = 0;
      w.cpu0 = process.cpuUsage();
      w.t0 = now();
      w.measuring = true;
      out({ event: 'start' });
      setTimeout(w.end, cfg.duration * 1000);
    }, cfg.warmup * 1000);
  };
  w.count = (bytes) => {
    if (!w.measuring) return;
    w.ops++;
    w.bytes += bytes;
    if (w.ops >= cfg.max_ops) w.end();
  };
  w.end = () => {
    if (w.stopped) return;
    const seconds = now() - w.t0;
    const cpu = process.cpuUsage(w.cpu0);
    w.measuring = false;
    w.stopped = true;
    out({ event: 'result', ops: w.ops, bytes: w.bytes, seconds, cpu_user_s: cpu.user / 1e6, cpu_system_s: cpu.system / 1e6, ...(onEnd ? onEnd() : {}) });
    setTimeout(() => process.exit(0), 50);
  };
  return w;
}

// echo / pipeline: every client keeps `inflight` messages outstanding.
async function runEcho() {
  if (cfg.raw) return runRawEcho();
  const data = payload(cfg.size);
  const opts = { binary: !!cfg.binary, compress: !!cfg.compression };
  let closedEarly = 0;
  let badLength = 0;
  const w = makeWindow(() => ({ closed_early: closedEarly, bad_length: badLength }));
  const sockets = await openMany(cfg.clients, 64, (ws) => {
    ws.on('message', (msg, isBinary) => {
      if (w.stopped) return;
      if (msg.length !== cfg.size || isBinary !== !!cfg.binary) badLength++;
      w.count(msg.length);
      if (!w.stopped) ws.send(data, opts);
    });
    ws.on('close', () => {
      if (!w.stopped) closedEarly++;
    });
    ws.on('error', () => {});
  });
  out({ event: 'connected', clients: sockets.length });
  for (const ws of sockets) for (let i = 0; i < cfg.inflight; i++) ws.send(data, opts);
  w.begin();
}

// echo over plain TCP (the raw_tcp peer: no framing): `size` bytes out,
// an op each time `size` bytes have come back; `inflight` buffers outstanding.
function rawConnect(u) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(u.port), u.hostname);
    sock.setNoDelay(true);
    sock.once('connect', () => resolve(sock));
    sock.once('error', reject);
  });
}

async function runRawEcho() {
  const u = new URL(cfg.url);
  const data = payload(cfg.size);
  let closedEarly = 0;
  const w = makeWindow(() => ({ closed_early: closedEarly }));
  const sockets = [];
  for (let i = 0; i < cfg.clients; i++) sockets.push(await rawConnect(u));
  for (const sock of sockets) {
    let pending = 0;
    sock.on('data', (chunk) => {
      if (w.stopped) return;
      pending += chunk.length;
      while (pending >= cfg.size) {
        pending -= cfg.size;
        w.count(cfg.size);
        if (w.stopped) return;
        sock.write(data);
      }
    });
    sock.on('close', () => {
      if (!w.stopped) closedEarly++;
    });
    sock.on('error', () => {});
  }
  out({ event: 'connected', clients: sockets.length });
  for (const sock of sockets) for (let i = 0; i < cfg.inflight; i++) sock.write(data);
  w.begin();
}

// burst (server push): each client asks for `count` messages of `size`
// bytes ("count size") and asks again once all have come; an op is one
// message received.
async function runBurst() {
  const request = `${cfg.count} ${cfg.size}`;
  let closedEarly = 0;
  let badLength = 0;
  const w = makeWindow(() => ({ closed_early: closedEarly, bad_length: badLength }));
  const sockets = await openMany(cfg.clients, 64, (ws) => {
    let left = cfg.count;
    ws.on('message', (msg) => {
      if (w.stopped) return;
      if (msg.length !== cfg.size) badLength++;
      w.count(msg.length);
      if (--left === 0 && !w.stopped) {
        left = cfg.count;
        ws.send(request);
      }
    });
    ws.on('close', () => {
      if (!w.stopped) closedEarly++;
    });
    ws.on('error', () => {});
  });
  out({ event: 'connected', clients: sockets.length });
  for (const ws of sockets) ws.send(request);
  w.begin();
}

// stream (server push): one request "stream size"; the server then sends
// as fast as it can; an op is one message received.
async function runStream() {
  let closedEarly = 0;
  let badLength = 0;
  const w = makeWindow(() => ({ closed_early: closedEarly, bad_length: badLength }));
  const sockets = await openMany(cfg.clients, 64, (ws) => {
    ws.on('message', (msg) => {
      if (w.stopped) return;
      if (msg.length !== cfg.size) badLength++;
      w.count(msg.length);
    });
    ws.on('close', () => {
      if (!w.stopped) closedEarly++;
    });
    ws.on('error', () => {});
  });
  out({ event: 'connected', clients: sockets.length });
  for (const ws of sockets) ws.send(`stream ${cfg.size}`);
  w.begin();
}

// http: `clients` keep-alive connections, each sending GET `path` and the
// next one once the whole response (Content-Length) has come; an op is one
// response. A server that answers "Connection: close" (Werkzeug's dev
// server always does) gets a new connection for the next request, as a
// browser would do. Raw sockets: Node's http client costs more per request
// than the servers under test.
async function runHttp() {
  const u = new URL(cfg.url);
  const request = Buffer.from(`GET ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\n\r\n`, 'latin1');
  let closedEarly = 0;
  let badStatus = 0;
  let lastBad = '';
  let reconnects = 0;
  const w = makeWindow(() => ({ closed_early: closedEarly, bad_status: badStatus, last_bad: lastBad, reconnects }));
  function attach(sock) {
    let buf = Buffer.alloc(0);
    let closing = false;
    sock.on('data', (chunk) => {
      if (w.stopped) return;
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.toString('latin1', 0, end);
        const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
        const length = m ? Number(m[1]) : 0;
        if (buf.length < end + 4 + length) return;
        if (!head.startsWith('HTTP/1.1 200') && !head.startsWith('HTTP/1.0 200')) {
          badStatus++;
          lastBad = head.slice(0, 60);
        }
        buf = buf.subarray(end + 4 + length);
        w.count(length);
        if (w.stopped) return;
        if (/\r\nconnection:\s*close/i.test(head) || head.startsWith('HTTP/1.0')) {
          closing = true;
          sock.destroy();
          reconnects++;
          rawConnect(u).then((next) => { attach(next); next.write(request); }, () => { closedEarly++; });
          return;
        }
        sock.write(request);
      }
    });
    sock.on('close', () => {
      if (!w.stopped && !closing) closedEarly++;
    });
    sock.on('error', () => {});
  }
  const sockets = [];
  for (let i = 0; i < cfg.clients; i++) sockets.push(await rawConnect(u));
  for (const sock of sockets) attach(sock);
  out({ event: 'connected', clients: sockets.length });
  for (const sock of sockets) sock.write(request);
  w.begin();
}

// connect: `concurrency` loops of open -> close handshake -> next.
// A minimal client on raw sockets (fixed key, pre-masked close frame): the
// `ws` client spends more CPU per handshake than the servers do, which
// would make the generator the bottleneck. Checks the 101 answer, its
// Sec-WebSocket-Accept and the server's close frame; an op is counted when
// the TCP connection is closed after both.
function runConnect() {
  const u = new URL(cfg.url);
  const port = Number(u.port);
  const host = u.hostname;
  const request = Buffer.from(
    `GET ${u.pathname} HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
    'latin1'
  );
  const ACCEPT = 's3pPLMBiTxaQ9kYGzzhZRbK+xOo=';
  const mask = [0x12, 0x34, 0x56, 0x78];
  const closeFrame = Buffer.from([0x88, 0x82, ...mask, 0x03 ^ mask[0], 0xe8 ^ mask[1]]); // close 1000, masked
  let errors = 0;
  let lastError = '';
  const w = makeWindow(() => ({ errors, last_error: lastError }));
  function one() {
    if (w.stopped) return;
    const sock = net.connect(port, host);
    sock.setNoDelay(true);
    let buf = Buffer.alloc(0);
    let upgraded = false;
    let closeSeen = false;
    let failed = false;
    const bad = (why) => {
      if (!failed) {
        failed = true;
        errors++;
        lastError = why;
        sock.destroy();
      }
    };
    sock.on('connect', () => sock.write(request));
    sock.on('data', (chunk) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.toString('latin1', 0, end);
        if (!head.startsWith('HTTP/1.1 101') || !head.includes(ACCEPT)) return bad('bad handshake answer: ' + head.slice(0, 40));
        upgraded = true;
        buf = buf.subarray(end + 4);
        sock.write(closeFrame);
      }
      if (buf.length >= 2) {
        if (buf[0] === 0x88) closeSeen = true;
        else if ((buf[0] & 0x0f) < 0x8) return bad('data frame before close');
        // control frames other than close (a ping) are ignored here
      }
    });
    sock.on('error', (err) => bad(err.message));
    sock.on('close', () => {
      if (upgraded && closeSeen && !failed) w.count(0);
      else if (!failed) {
        errors++;
        lastError = 'closed before the closing handshake';
      }
      setImmediate(one);
    });
  }
  for (let i = 0; i < cfg.concurrency; i++) one();
  out({ event: 'connected', clients: 0 });
  w.begin();
}

// broadcast: client 0 sends; the server sends each message to every client;
// at most `window` messages are outstanding (not yet received by all).
// (A raw-socket receiver was tried: it costs Node as much per delivery as
// `ws` does, the per-socket read event dominating, so `ws` is kept.)
async function runBroadcast() {
  const n = cfg.clients;
  const pending = new Map(); // sequence -> receipts still missing
  let seq = 0;
  let closedEarly = 0;
  let completed = 0;
  const w = makeWindow(() => ({ closed_early: closedEarly, broadcasts_completed: completed }));
  const opts = { binary: false, compress: false };
  let driver = null;
  function sendNext() {
    if (w.stopped) return;
    const s = seq++;
    const body = Buffer.alloc(cfg.size, 'x');
    body.write(String(s).padStart(10, '0'), 0, 'latin1');
    pending.set(s, n);
    driver.send(body, opts);
  }
  const sockets = await openMany(n, 64, (ws) => {
    ws.on('message', (msg) => {
      if (w.stopped) return;
      const s = parseInt(msg.toString('latin1', 0, 10), 10);
      w.count(msg.length);
      const left = pending.get(s) - 1;
      if (left > 0) {
        pending.set(s, left);
      } else {
        pending.delete(s);
        completed++;
        sendNext();
      }
    });
    ws.on('close', () => {
      if (!w.stopped) closedEarly++;
    });
    ws.on('error', () => {});
  });
  driver = sockets[0];
  out({ event: 'connected', clients: sockets.length });
  // Let the server finish registering the last connections before broadcasting.
  setTimeout(() => {
    for (let i = 0; i < cfg.window; i++) sendNext();
    w.begin();
  }, 300);
}

// idle: open up to `target` connections, keep them, count closes and pings.
// During the hold, every `echo_every` s a 32 B message goes to each of
// `echo_sample` connections spread over the set (one in flight each) and its
// round trip is timed. With `wait_close`, the connections stay open after the
// result until the server closes them (run.py asks it to), and a "closed"
// event tells their close codes (or who was still open after `close_wait` s).
// `local_address` (a string, or a list taken in turn): the source address the
// connections are bound to (127.0.0.2 and up are loopback too on Linux: each
// source and destination address pair has its own ephemeral ports, about
// 28,000 by default). `wait_go`: after "held", wait (up to `connect_limit` s)
// for a "go" line before holding, so that several generators hold together.
// `echo_raw`: the result lists every round trip (`echo_rtts_ms`), so that
// generators' samples can be pooled.
function runIdle() {
  const t0 = now();
  const sources = cfg.local_address ? [].concat(cfg.local_address) : [];
  let started = 0;
  let open = 0;
  let failed = 0;
  let closedAfterOpen = 0;
  let pings = 0;
  let inFlight = 0;
  let done = false;
  let heldAt = null;
  let closing = false;
  const closeCodes = {};
  let firstClose = null;
  let lastClose = null;
  const sockets = [];
  const echo = { sent: 0, answered: 0, skipped: 0, rtts: [] };
  function report(event, extra) {
    out({ event, open, failed, closed_after_open: closedAfterOpen, pings, seconds: now() - t0, ...extra });
  }
  function percentile(sorted, q) {
    return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : null;
  }
  function startEchoes() {
    const count = Math.min(cfg.echo_sample || 0, sockets.length);
    const sample = [];
    for (let i = 0; i < count; i++) sample.push(sockets[Math.floor((i * sockets.length) / count)]);
    const pending = new Map();
    for (const ws of sample) {
      ws.on('message', () => {
        const sentAt = pending.get(ws);
        if (sentAt === undefined) return;
        pending.delete(ws);
        echo.answered++;
        echo.rtts.push((now() - sentAt) * 1000);
      });
    }
    function tick() {
      for (const ws of sample) {
        if (ws.readyState !== WebSocket.OPEN) continue;
        if (pending.has(ws)) {
          echo.skipped++; // the previous one is still unanswered
          continue;
        }
        pending.set(ws, now());
        echo.sent++;
        ws.send(Buffer.alloc(32, 'e'));
      }
    }
    tick();
    return count ? setInterval(tick, (cfg.echo_every || 1) * 1000) : null;
  }
  function echoSummary() {
    const sorted = echo.rtts.slice().sort((a, b) => a - b);
    return { echo_sample: Math.min(cfg.echo_sample || 0, sockets.length), echo_every: cfg.echo_every || 1, echo_sent: echo.sent,
      echo_answered: echo.answered, echo_skipped: echo.skipped, echo_rtt_p50_ms: percentile(sorted, 0.5),
      echo_rtt_p99_ms: percentile(sorted, 0.99), echo_rtt_max_ms: sorted.length ? sorted[sorted.length - 1] : null,
      ...(cfg.echo_raw ? { echo_rtts_ms: echo.rtts } : {}) };
  }
  let closedReported = false;
  function closedReport(reason) {
    if (closedReported) return;
    closedReported = true;
    const codes = { ...closeCodes };
    report('closed', { reason, close_codes: codes, still_open: open,
      close_spread_seconds: firstClose === null ? null : lastClose - firstClose });
    for (const ws of sockets) ws.terminate();
    setTimeout(() => process.exit(0), 200);
  }
  function finishConnecting(reason) {
    if (done) return;
    done = true;
    clearInterval(progress);
    report('held', { stop_reason: reason, connect_seconds: now() - t0 });
    if (!cfg.wait_go) return startHold();
    onGo = startHold;
    if (stdinBuf.split('\n').includes('go')) {
      onGo = null;
      return startHold();
    }
    setTimeout(() => {
      if (onGo) fail(`no "go" within ${cfg.connect_limit} s of "held"`);
    }, cfg.connect_limit * 1000).unref();
  }
  function startHold() {
    heldAt = now();
    if (cfg.wait_go) report('holding', { waited_seconds: heldAt - t0 });
    const pings0 = pings;
    const closed0 = closedAfterOpen;
    const echoes = startEchoes();
    setTimeout(() => {
      if (echoes) clearInterval(echoes);
      report('result', { hold_seconds: now() - heldAt, pings_during_hold: pings - pings0, closed_during_hold: closedAfterOpen - closed0,
        ...echoSummary() });
      if (!cfg.wait_close) {
        for (const ws of sockets) ws.terminate();
        setTimeout(() => process.exit(0), 200);
        return;
      }
      closing = true;
      if (open === 0) return closedReport('all closed');
      setTimeout(() => closedReport(`close_wait ${cfg.close_wait} s passed`), (cfg.close_wait || 60) * 1000);
    }, cfg.hold * 1000);
  }
  function maybeDone() {
    if (done) return;
    if (stopRequested) return finishConnecting('stopped by run.py (system limit guard)');
    if (failed >= cfg.max_failures) return finishConnecting(`${failed} connection failures`);
    if (now() - t0 > cfg.connect_limit) return finishConnecting(`connect time limit ${cfg.connect_limit} s`);
    if (started >= cfg.target && inFlight === 0) return finishConnecting('target reached');
  }
  function next() {
    maybeDone();
    if (done || started >= cfg.target) return;
    started++;
    inFlight++;
    const ws = new WebSocket(cfg.url, sources.length ? { ...WS_OPTIONS, localAddress: sources[started % sources.length] } : WS_OPTIONS);
    let wasOpen = false;
    let settled = false;
    const settle = () => {
      if (!settled) {
        settled = true;
        inFlight--;
        setImmediate(next);
      }
    };
    ws.on('open', () => {
      wasOpen = true;
      open++;
      sockets.push(ws);
      settle();
    });
    ws.on('ping', () => {
      pings++;
    });
    ws.on('error', () => {});
    ws.on('close', (code) => {
      if (wasOpen) {
        open--;
        closedAfterOpen++;
        if (closing) {
          closeCodes[code] = (closeCodes[code] || 0) + 1;
          lastClose = now();
          if (firstClose === null) firstClose = lastClose;
          if (open === 0) closedReport('all closed');
        }
      } else {
        failed++;
      }
      settle();
    });
  }
  const progress = setInterval(() => {
    report('progress');
    maybeDone();
  }, 500);
  for (let i = 0; i < cfg.concurrency; i++) next();
}

const modes = { echo: runEcho, connect: runConnect, broadcast: runBroadcast, idle: runIdle, burst: runBurst, stream: runStream, http: runHttp };
if (!modes[cfg.mode]) fail(`unknown mode ${cfg.mode}`);
Promise.resolve()
  .then(modes[cfg.mode])
  .catch((err) => fail(String(err && err.message ? err.message : err)));

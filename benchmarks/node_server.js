'use strict';
// Node's `ws` as a peer of benchmarks/run.py: the same modes as servers.py.
//   node node_server.js '{"mode":"echo|iter|broadcast|burst|stream","compression":false,"threshold":null}'
// Prints "PORT <n> <path of ws>" once it listens on 127.0.0.1.
const path = require('path');
const WS_PATH = path.join(__dirname, '.work', 'node_modules', 'ws');
const { WebSocketServer, WebSocket } = require(WS_PATH);

const cfg = JSON.parse(process.argv[2] || '{}');
const wss = new WebSocketServer({
  host: '127.0.0.1',
  port: 0,
  // ws's defaults when on (threshold 1024), or its threshold set by run.py --deflate-threshold
  perMessageDeflate: cfg.compression ? (cfg.threshold == null ? true : { threshold: cfg.threshold }) : false,
  maxPayload: 16 * 1024 * 1024,
});

function parseRequest(data) {
  const [first, size] = data.toString().split(' ');
  return first === 'stream' ? { stream: true, size: Number(size) } : { count: Number(first), size: Number(size) };
}

wss.on('connection', (ws) => {
  ws.on('error', () => {});
  if (cfg.mode === 'echo' || cfg.mode === 'iter') {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  } else if (cfg.mode === 'broadcast') {
    ws.on('message', (data, isBinary) => {
      for (const client of wss.clients) if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
    });
  } else if (cfg.mode === 'burst') {
    ws.on('message', (data) => {
      const r = parseRequest(data);
      const payload = 'x'.repeat(r.size);
      for (let i = 0; i < r.count; i++) ws.send(payload);
    });
  } else if (cfg.mode === 'stream') {
    ws.on('message', (data) => {
      const payload = 'x'.repeat(parseRequest(data).size);
      // Send while the socket takes it, then wait for it to drain (what a Node streamer does).
      const pump = () => {
        while (ws.readyState === WebSocket.OPEN && ws.bufferedAmount < 256 * 1024) ws.send(payload);
        if (ws.readyState === WebSocket.OPEN) setImmediate(pump);
      };
      pump();
    });
  }
});

wss.on('listening', () => {
  process.stdout.write(`PORT ${wss.address().port} ${WS_PATH}\n`);
});

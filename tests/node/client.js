'use strict';
// One client on Node's `ws` (8), driven by the tests through tests/node_client.py.
//
//   node client.js '<json config>'
//
// config: {module, url, protocols?, options?, timeout}; `module` is the path
// of the `ws` package (installed by tests/node_client.py), `options` go to
// `new WebSocket(url, protocols, options)` as they are (headers,
// perMessageDeflate, maxPayload, ...).
//
// What the client sees goes to stdout, one JSON object per line, as it happens:
//   {"event":"open","protocol":...,"extensions":...}
//   {"event":"message","isBinary":...,"data":<base64>}
//   {"event":"ping"|"pong","data":<base64>}
//   {"event":"close","code":...,"reason":<UTF-8 text>}
//   {"event":"error","message":...}
//   {"event":"unexpected-response","status":...,"headers":{...},"body":...}
//     (a handshake answered with something else than 101: the client reads
//     the body, reports, and ends the request; ws emits nothing more)
//   {"event":"upgrade","status":101,"headers":{...}}
//   {"event":"done","op":...} after each command; {"event":"command-error","op":...,"message":...}
//
// Commands come on stdin, one JSON object per line:
//   {"op":"send","data":<base64>,"binary":bool,"compress":bool?}
//   {"op":"ping"|"pong","data":<base64>}
//   {"op":"close","code":int?,"reason":str?}    (no code: a close frame without one)
//   {"op":"terminate"}
// The process exits when stdin ends, and at the latest after config.timeout seconds.

const readline = require('readline');

const cfg = JSON.parse(process.argv[2]);
const WebSocket = require(cfg.module);

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

setTimeout(() => {
  out({ event: 'error', message: `watchdog: still running after ${cfg.timeout} s` });
  process.exit(2);
}, cfg.timeout * 1000).unref();

const ws = new WebSocket(cfg.url, cfg.protocols || [], cfg.options || {});

ws.on('open', () => out({ event: 'open', protocol: ws.protocol, extensions: ws.extensions }));
ws.on('upgrade', (res) => out({ event: 'upgrade', status: res.statusCode, headers: res.headers }));
ws.on('message', (data, isBinary) => out({ event: 'message', isBinary, data: Buffer.from(data).toString('base64') }));
ws.on('ping', (data) => out({ event: 'ping', data: data.toString('base64') }));
ws.on('pong', (data) => out({ event: 'pong', data: data.toString('base64') }));
ws.on('close', (code, reason) => out({ event: 'close', code, reason: reason.toString('utf8') }));
ws.on('error', (err) => out({ event: 'error', message: err.message }));
ws.on('unexpected-response', (req, res) => {
  const chunks = [];
  res.on('data', (chunk) => chunks.push(chunk));
  res.on('end', () => {
    out({ event: 'unexpected-response', status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') });
    req.destroy();
  });
});

function run(command) {
  const data = command.data === undefined ? undefined : Buffer.from(command.data, 'base64');
  switch (command.op) {
    case 'send': {
      const options = { binary: !!command.binary };
      if (command.compress !== undefined) options.compress = command.compress;
      ws.send(data, options, (err) => {
        if (err) out({ event: 'command-error', op: 'send', message: err.message });
        else out({ event: 'done', op: 'send' });
      });
      return;
    }
    case 'ping':
      ws.ping(data);
      break;
    case 'pong':
      ws.pong(data);
      break;
    case 'close':
      ws.close(command.code, command.reason);
      break;
    case 'terminate':
      ws.terminate();
      break;
    default:
      throw new Error(`unknown op ${command.op}`);
  }
  out({ event: 'done', op: command.op });
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  let command;
  try {
    command = JSON.parse(line);
    run(command);
  } catch (err) {
    out({ event: 'command-error', op: command && command.op, message: err.message });
  }
}).on('close', () => process.exit(0));

// The Faye peer for bench/ scenarios (--peer faye): a plain Node http server
// with Faye's NodeAdapter mounted at --path, long-polling and WebSocket on the
// same port, the in-memory engine, and the bench's connect timeout.
//
//   node bench/peers/faye_server.mjs --host 127.0.0.1 --port 8081 --path /cometd --timeout 10000
//
// --timeout is in milliseconds like `python -m engine serve --timeout`; Faye's
// own option is in seconds (it advises timeout * 1000 back to clients).
// Prints "faye <version> listening on http://HOST:PORT/PATH" once it accepts
// connections; SIGTERM/SIGINT stop it.

import http from 'node:http';
import { createRequire } from 'node:module';
import process from 'node:process';

const require = createRequire(import.meta.url);
const faye = require('faye');
const fayeVersion = require('faye/package.json').version;

function parseArgs(argv) {
  const opts = { host: '127.0.0.1', port: 8081, path: '/cometd', timeout: 30000 };
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i];
    const value = argv[i + 1];
    if (!name.startsWith('--') || value === undefined) {
      console.error(`faye_server: bad argument ${name}`);
      process.exit(2);
    }
    const key = name.slice(2);
    if (!(key in opts)) {
      console.error(`faye_server: unknown option ${name}`);
      process.exit(2);
    }
    opts[key] = typeof opts[key] === 'number' ? Number(value) : value;
    i++;
  }
  if (!Number.isFinite(opts.port) || !(opts.timeout > 0)) {
    console.error('faye_server: --port and --timeout must be numbers, timeout > 0');
    process.exit(2);
  }
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const bayeux = new faye.NodeAdapter({ mount: opts.path, timeout: opts.timeout / 1000 });
const server = http.createServer((req, res) => {
  res.writeHead(404, { 'Content-Type': 'text/plain' });
  res.end('not found\n');
});
// Held long-polls are answered by Faye's own timeout, never cut by Node's.
server.requestTimeout = 0;
server.headersTimeout = 60000;
server.keepAliveTimeout = Math.max(5000, opts.timeout * 2);
bayeux.attach(server);

let closing = false;
function stop() {
  if (closing) return;
  closing = true;
  server.close();
  setTimeout(() => process.exit(0), 200).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

server.listen(opts.port, opts.host, 4096, () => {
  const addr = server.address();
  console.log(
    `faye ${fayeVersion} listening on http://${opts.host}:${addr.port}${opts.path} ` +
      `(timeout ${opts.timeout / 1000} s, node ${process.version})`,
  );
});

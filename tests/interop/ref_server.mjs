#!/usr/bin/env node
// Reference Bayeux server for debugging the interop harness: the official
// `cometd-nodejs-server` (long-polling only, no WebSocket) mounted at --path.
//
// Command line mirrors `python -m engine serve` so that tests/harness.py can
// start either one (ENGINE_INTEROP_TARGET=ref):
//
//   node ref_server.mjs --host 127.0.0.1 --port 18080 --path /cometd \
//        [--timeout MS] [--interval MS] [--max-interval MS] [--log-level debug]
//
// When listening it prints exactly one line to stdout:
//   ref-server serving http://127.0.0.1:18080/cometd
// SIGTERM / SIGINT close the server and exit 0.

import * as http from "node:http";
import cometdServerModule from "cometd-nodejs-server";
import ackModule from "cometd-nodejs-server/ack-extension.js";

function parseArgs(argv) {
    const opts = {
        host: "127.0.0.1",
        port: 0,
        path: "/cometd",
        timeout: undefined,
        interval: undefined,
        maxInterval: undefined,
        logLevel: "info",
    };
    for (let i = 0; i < argv.length; ++i) {
        const arg = argv[i];
        const next = () => {
            if (i + 1 >= argv.length) {
                throw new Error("missing value for " + arg);
            }
            return argv[++i];
        };
        switch (arg) {
            case "serve":
                break; // accepted for symmetry with `python -m engine serve`
            case "--host": opts.host = next(); break;
            case "--port": opts.port = parseInt(next(), 10); break;
            case "--path": opts.path = next(); break;
            case "--timeout": opts.timeout = parseInt(next(), 10); break;
            case "--interval": opts.interval = parseInt(next(), 10); break;
            case "--max-interval": opts.maxInterval = parseInt(next(), 10); break;
            case "--log-level": opts.logLevel = next(); break;
            default:
                // Unknown engine options are ignored (with a note) so that
                // tests passing engine-specific flags still run here.
                process.stderr.write("ref_server: ignoring unknown argument " + arg + "\n");
        }
    }
    opts.path = opts.path.replace(/\/+$/, "") || "/";
    return opts;
}

const opts = parseArgs(process.argv.slice(2));

const serverOptions = {logLevel: opts.logLevel};
if (opts.timeout !== undefined) serverOptions.timeout = opts.timeout;
if (opts.interval !== undefined) serverOptions.interval = opts.interval;
if (opts.maxInterval !== undefined) serverOptions.maxInterval = opts.maxInterval;

const cometd = cometdServerModule.createCometDServer(serverOptions);
// Like a typical CometD deployment: the acknowledged-messages extension on.
cometd.addExtension(new ackModule.AcknowledgedMessagesExtension());

function underPath(url) {
    const pathname = (url || "/").split("?")[0];
    return opts.path === "/" || pathname === opts.path || pathname.startsWith(opts.path + "/");
}

const httpServer = http.createServer((request, response) => {
    if (!underPath(request.url)) {
        response.statusCode = 404;
        response.end();
        return;
    }
    cometd.handle(request, response);
});
// CometD holds /meta/connect for `timeout`; keep Node's own timeouts above it.
httpServer.requestTimeout = 0;
httpServer.headersTimeout = 60000;
httpServer.keepAliveTimeout = 65000;

httpServer.on("error", (err) => {
    process.stderr.write("ref_server: " + err.stack + "\n");
    process.exit(1);
});

httpServer.listen(opts.port, opts.host, () => {
    const address = httpServer.address();
    const host = address.family === "IPv6" ? "[" + address.address + "]" : address.address;
    process.stdout.write("ref-server serving http://" + host + ":" + address.port + opts.path + "\n");
});

let stopping = false;
function stop(signal) {
    if (stopping) {
        return;
    }
    stopping = true;
    process.stderr.write("ref_server: " + signal + ", shutting down\n");
    try {
        cometd.close();
    } catch (x) {
        // ignore
    }
    httpServer.close(() => process.exit(0));
    // Held long polls keep connections open: drop them.
    httpServer.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
}
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));

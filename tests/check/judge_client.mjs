#!/usr/bin/env node
// Runs a real JavaScript Bayeux client (unmodified) against the client judge
// (`python -m engine check --client`), one fresh client per situation:
//
//   node tests/check/judge_client.mjs cometd|faye URL [--transport long-polling|websocket]
//        [--max-network-delay MS (cometd)]
//
// cometd: the official CometD client (npm `cometd` 9.0.0) on Node through
// `cometd-nodejs-client` 2.0.0 (its WebSocket is the `ws` package), with only
// the chosen transport registered. faye: Faye's Node client (npm `faye`
// 1.4.3); `--transport long-polling` disables its websocket, `websocket`
// leaves its own negotiation on (handshake over HTTP, then a WebSocket).
//
// Each client subscribes once, after its first successful handshake, to
// /judge/probe and publishes what it receives back on /judge/echo; whether it
// subscribes again after a re-handshake is the library's business. The loop
// polls the judge's /judge/state: a new `generation` means a new situation
// (stop the client, start another); `done`, or the judge gone, ends it.
// The packages come from tests/interop/node_modules (npm ci there).

import {createRequire} from "node:module";
import {pathToFileURL} from "node:url";
import {parseArgs} from "node:util";

const require = createRequire(new URL("../interop/package.json", import.meta.url));
const importPackage = (name) => import(pathToFileURL(require.resolve(name)).href);
const POLL_MS = 100;
const STOP_MS = 2000;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const log = (...args) => process.stderr.write(args.map(String).join(" ") + "\n");

async function cometdStarter(url, transport, maxNetworkDelay) {
    const {adapt} = await importPackage("cometd-nodejs-client");
    adapt();
    // CometD logs through console.*: keep stdout clean.
    console.log = console.info = console.debug = log;
    const {CometD} = await importPackage("cometd");
    return () => {
        const cometd = new CometD();
        for (const type of cometd.getTransportTypes().slice()) {
            if (type !== transport) {
                cometd.unregisterTransport(type);
            }
        }
        cometd.configure({url: url, logLevel: "warn", maxNetworkDelay: maxNetworkDelay});
        let subscribed = false;
        cometd.addListener("/meta/handshake", (reply) => {
            if (reply.successful && !subscribed) {
                subscribed = true;
                cometd.subscribe("/judge/probe", (message) => cometd.publish("/judge/echo", message.data));
            }
        });
        cometd.handshake();
        return () => new Promise((resolve) => {
            setTimeout(resolve, STOP_MS);
            try {
                cometd.disconnect(() => resolve());
            } catch (error) {
                resolve();
            }
        });
    };
}

async function fayeStarter(url, transport) {
    const faye = require("faye");
    return () => {
        const client = new faye.Client(url);
        if (transport === "long-polling") {
            client.disable("websocket");
        }
        client.subscribe("/judge/probe", (data) => client.publish("/judge/echo", data));
        return async () => {
            try {
                client.disconnect();
            } catch (error) {
                log("faye disconnect:", error);
            }
        };
    };
}

async function drive(stateUrl, start) {
    let generation = null;
    let stop = null;
    for (;;) {
        let state;
        try {
            const response = await fetch(stateUrl, {signal: AbortSignal.timeout(5000)});
            state = await response.json();
        } catch (error) {
            break;  // the judge is gone
        }
        if (state.done) {
            break;
        }
        if (state.generation !== generation) {
            if (stop) {
                await stop();
            }
            generation = state.generation;
            stop = start();
        }
        await sleep(POLL_MS);
    }
    if (stop) {
        await stop();
    }
}

async function main() {
    const {values, positionals} = parseArgs({
        allowPositionals: true,
        options: {
            transport: {type: "string", default: "long-polling"},
            "max-network-delay": {type: "string", default: "10000"},
        },
    });
    const [client, url] = positionals;
    if (!["cometd", "faye"].includes(client) || !url || !["long-polling", "websocket"].includes(values.transport)) {
        log("usage: judge_client.mjs cometd|faye URL [--transport long-polling|websocket] [--max-network-delay MS]");
        process.exit(3);
    }
    // A client library that throws from a timer (CometD on advice it does not
    // know) must not end the driver: the judge reports what the client did.
    process.on("uncaughtException", (error) => log("uncaught:", error && error.stack || error));
    const start = client === "cometd"
        ? await cometdStarter(url, values.transport, Number(values["max-network-delay"]))
        : await fayeStarter(url, values.transport);
    await drive(new URL("/judge/state", url).href, start);
    process.exit(0);
}

main();

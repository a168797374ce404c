#!/usr/bin/env node
// Interop driver: runs one scenario with the Faye Node client (npm `faye`
// 1.4.3) against a Bayeux server and prints ONE JSON line with the results on
// stdout (same conventions as cometd_client.mjs).
//
//   node faye_client.mjs URL SCENARIO [--transport websocket|long-polling]
//        [--timeout MS] [--step-timeout MS] [--duration MS (idle)]
//        [--log-level warn|info|debug] [--no-wire]
//
// --transport long-polling disables websocket (client.disable('websocket'));
// --transport websocket (or none) leaves Faye's own negotiation on, which
// picks websocket when the server offers it. Either way the result reports
// what was actually used.
//
// Scenarios: handshake, subscribe_publish, wildcard, two_clients,
// unsubscribe, disconnect, idle.
//
// Exit status: 0 scenario passed, 1 a check failed, 2 timed out, 3 bad usage.
// The JSON line has: scenario, ok, transport (connection type in use at the
// end, per Faye's dispatcher), transports (per client), url, elapsed_ms,
// results, error (when !ok), wire (every HTTP request/response and WebSocket
// frame the clients saw, unless --no-wire).
//
// Notes on faye 1.4.3 on Node (read from its source, src/):
//  - Transports are tried in the order in-process, websocket, long-polling.
//    The handshake always goes over long-polling (Dispatcher.selectTransport
//    with MANDATORY_CONNECTION_TYPES); while doing so Faye already opens a
//    test WebSocket (Transport.get calls isUsable on types it may not use).
//    After a successful handshake it selects the first of its types that the
//    server lists and that works: `websocket` when the socket opened.
//  - `client.disable('websocket')` (per client) keeps it on long-polling and
//    opens no socket at all.
//  - The connection type in use is `client._dispatcher._transport.connectionType`
//    (the dispatcher drops `_transport` on a successful disconnect).
//  - Each client has its own tough-cookie jar (dispatcher.cookies); the
//    WebSocket upgrade sends its cookies.
//  - HTTP: everything queued in one tick goes in one POST to the base URL; a
//    /meta/connect batched with other messages gets advice {timeout: 0}.
//    WebSocket: one message per frame, `[message]`.
//  - Every message with a reply callback is resent, with the same id, when no
//    reply came within 1.2 x advice.timeout (connect and others alike), then
//    every `retry` (5) s; a closed WebSocket resends all pending messages.
//    Sends of the same id more than once are reported in results.resends.
//  - Advice is merged (Object.assign) into the client's advice.
//  - Subscriptions are matched again on the client (Channel.expand), so the
//    server's raw deliveries are recorded separately (incoming extension).

import {createRequire} from "node:module";

const require = createRequire(import.meta.url);
const faye = require("faye");
const NodeHttp = require("faye/src/transport/node_http");
const FayeWebSocket = require("faye/src/transport/web_socket");

const TRANSPORTS = ["websocket", "long-polling"];
const SCENARIOS = {};

// ---------------------------------------------------------------- arguments

function usage(message) {
    process.stderr.write((message ? message + "\n" : "") +
        "usage: node faye_client.mjs URL SCENARIO [--transport T] [--timeout MS] " +
        "[--step-timeout MS] [--duration MS] [--log-level L] [--no-wire]\n" +
        "scenarios: " + Object.keys(SCENARIOS).join(", ") + "\n" +
        "transports: " + TRANSPORTS.join(", ") + " (default: Faye's own choice)\n");
    process.exit(3);
}

function parseArgs(argv) {
    const opts = {
        url: null,
        scenario: null,
        transport: null,
        timeout: 20000,
        stepTimeout: 8000,
        duration: 3500,
        logLevel: "warn",
        wire: true,
    };
    const positional = [];
    for (let i = 0; i < argv.length; ++i) {
        const arg = argv[i];
        const next = () => {
            if (i + 1 >= argv.length) {
                usage("missing value for " + arg);
            }
            return argv[++i];
        };
        if (arg === "--transport") {
            opts.transport = next();
        } else if (arg.startsWith("--transport=")) {
            opts.transport = arg.substring("--transport=".length);
        } else if (arg === "--timeout") {
            opts.timeout = parseInt(next(), 10);
        } else if (arg === "--step-timeout") {
            opts.stepTimeout = parseInt(next(), 10);
        } else if (arg === "--duration") {
            opts.duration = parseInt(next(), 10);
        } else if (arg === "--log-level") {
            opts.logLevel = next();
        } else if (arg === "--no-wire") {
            opts.wire = false;
        } else if (arg === "-h" || arg === "--help") {
            usage();
        } else if (arg.startsWith("--")) {
            usage("unknown option " + arg);
        } else {
            positional.push(arg);
        }
    }
    if (positional.length !== 2) {
        usage("expected URL and SCENARIO");
    }
    [opts.url, opts.scenario] = positional;
    if (opts.transport && !TRANSPORTS.includes(opts.transport)) {
        usage("unknown transport " + opts.transport);
    }
    if (!SCENARIOS[opts.scenario]) {
        usage("unknown scenario " + opts.scenario);
    }
    return opts;
}

// ---------------------------------------------------------------- wire log

const START = Date.now();
const wire = [];
let wireEnabled = true;

function parseMaybeJSON(text) {
    if (typeof text !== "string") {
        return text;
    }
    try {
        return JSON.parse(text);
    } catch (x) {
        return text;
    }
}

function record(entry) {
    if (!wireEnabled) {
        return;
    }
    entry.t = Date.now() - START;
    wire.push(entry);
}

function copy(message) {
    return message === undefined ? undefined : JSON.parse(JSON.stringify(message));
}

function labelOf(dispatcher) {
    return (dispatcher && dispatcher._client && dispatcher._client._interopLabel) || "?";
}

function peerOf(dispatcher) {
    return dispatcher && dispatcher._client && dispatcher._client._interopPeer;
}

// Every message actually handed to a connection (HTTP body or WS frame),
// counted per client and id: Faye's resends show up as counts > 1.
function noteSent(dispatcher, messages, connectionType) {
    const peer = peerOf(dispatcher);
    if (!peer || !Array.isArray(messages)) {
        return;
    }
    for (const m of messages) {
        if (!m || typeof m !== "object") {
            continue;
        }
        peer.wireSends.push({id: m.id, channel: m.channel, transport: connectionType});
        if (m.id !== undefined) {
            peer.sendCounts.set(m.id, (peer.sendCounts.get(m.id) || 0) + 1);
        }
    }
}

// HTTP (long-polling): record each POST and its response.
const originalHttpRequest = NodeHttp.prototype.request;
NodeHttp.prototype.request = function (messages) {
    const label = labelOf(this._dispatcher);
    const path = this.endpoint.pathname + (this.endpoint.search || "");
    record({
        client: label,
        kind: "http",
        dir: "send",
        method: "POST",
        path: path,
        cookie: this._getCookies(),
        body: copy(messages),
    });
    noteSent(this._dispatcher, messages, "long-polling");
    const request = originalHttpRequest.call(this, messages);
    // Faye's own 'response' listener runs first (it sets the encoding and
    // reads the body); ours only listens along.
    request.on("response", (response) => {
        let body = "";
        response.on("data", (chunk) => body += chunk);
        response.on("end", () => record({
            client: label,
            kind: "http",
            dir: "recv",
            path: path,
            status: response.statusCode,
            contentType: response.headers["content-type"] || null,
            body: parseMaybeJSON(body),
        }));
    });
    request.on("error", (x) => record({client: label, kind: "http", dir: "error", path: path, error: x.message}));
    return request;
};

// WebSocket: record the upgrade and every frame.
let wsCounter = 0;
const originalCreateSocket = FayeWebSocket.prototype._createSocket;
FayeWebSocket.prototype._createSocket = function () {
    const dispatcher = this._dispatcher;
    const label = labelOf(dispatcher);
    const cookie = this._getCookies();
    const socket = originalCreateSocket.call(this);
    if (!socket) {
        return socket;
    }
    const id = "ws" + (++wsCounter);
    const peer = peerOf(dispatcher);
    if (peer) {
        peer.wsOpened += 1;
    }
    record({client: label, kind: "ws", conn: id, dir: "open-request", url: FayeWebSocket.getSocketUrl(this.endpoint), cookie: cookie});
    socket.addEventListener("open", () => record({client: label, kind: "ws", conn: id, dir: "open"}));
    socket.addEventListener("message", (e) => record({client: label, kind: "ws", conn: id, dir: "recv", body: parseMaybeJSON(String(e.data))}));
    socket.addEventListener("close", (e) => record({client: label, kind: "ws", conn: id, dir: "close", code: e.code, reason: e.reason}));
    socket.addEventListener("error", (e) => record({client: label, kind: "ws", conn: id, dir: "error", error: String(e && (e.message || e.data) || e)}));
    const send = socket.send;
    socket.send = function (data) {
        const body = parseMaybeJSON(String(data));
        record({client: label, kind: "ws", conn: id, dir: "send", body: body});
        noteSent(dispatcher, Array.isArray(body) ? body : [body], "websocket");
        return send.call(socket, data);
    };
    return socket;
};

// ---------------------------------------------------------------- helpers

class CheckFailed extends Error {
}

class StepTimeout extends Error {
}

function check(condition, message, detail) {
    if (!condition) {
        const text = detail === undefined ? message : message + ": " + JSON.stringify(detail);
        throw new CheckFailed(text);
    }
}

function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

function withTimeout(promise, ms, what) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new StepTimeout("timed out after " + ms + " ms waiting for " + what)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function canonical(v) {
    if (Array.isArray(v)) {
        return v.map(canonical);
    }
    if (v && typeof v === "object") {
        const out = {};
        for (const k of Object.keys(v).sort()) {
            out[k] = canonical(v[k]);
        }
        return out;
    }
    return v;
}

function deepEqual(a, b) {
    return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
}

// Faye's deferrables (Subscription, Publication) as real promises.
function deferred(d, what) {
    return new Promise((resolve, reject) => {
        d.then((value) => resolve(value), (error) => reject(new CheckFailed(what + " failed: " + JSON.stringify(error))));
    });
}

// One Faye client with message recorders.
class Peer {
    constructor(label, opts) {
        this.label = label;
        this.opts = opts;
        this.client = new faye.Client(opts.url);
        this.client._interopLabel = label;
        this.client._interopPeer = this;
        if (opts.transport === "long-polling") {
            this.client.disable("websocket");
        }
        this.events = [];         // raw deliveries (non-meta messages with data), before client-side matching
        this.metaReplies = [];    // every /meta/* message received
        this.replies = [];        // non-meta replies (publish replies)
        this.outgoing = [];       // every message Faye sent (once per message, after extensions)
        this.handshakes = [];
        this.connects = [];
        this.connectsSent = 0;
        this.sendCounts = new Map();  // id -> number of times handed to a connection
        this.wireSends = [];
        this.wsOpened = 0;
        this.transportEvents = [];
        this.waiters = [];
        this.lastTransport = null;

        const self = this;
        this.client.addExtension({
            incoming(message, callback) {
                const m = copy(message);
                const isMeta = typeof m.channel === "string" && m.channel.startsWith("/meta/");
                if (isMeta) {
                    self.metaReplies.push(m);
                    if (m.channel === "/meta/handshake") {
                        self.handshakes.push(m);
                    } else if (m.channel === "/meta/connect") {
                        self.connects.push(m);
                    }
                } else if (("successful" in m) && !("data" in m)) {
                    self.replies.push(m);
                } else {
                    self.events.push(m);
                }
                self.noteTransport();
                self.wake();
                callback(message);
            },
            outgoing(message, callback) {
                self.outgoing.push(copy(message));
                if (message.channel === "/meta/connect") {
                    self.connectsSent += 1;
                }
                self.noteTransport();
                self.wake();
                callback(message);
            },
        });
        this.client.on("transport:down", () => this.transportEvents.push({t: Date.now() - START, event: "down"}));
        this.client.on("transport:up", () => this.transportEvents.push({t: Date.now() - START, event: "up"}));
    }

    noteTransport() {
        const t = this.client._dispatcher._transport;
        if (t) {
            this.lastTransport = t.connectionType;
        }
    }

    transportType() {
        this.noteTransport();
        return this.lastTransport;
    }

    wake() {
        const run = () => {
            for (const w of this.waiters.slice()) {
                w();
            }
        };
        run();
        // Listeners and callbacks run after the incoming extensions.
        setTimeout(run, 0);
    }

    waitUntil(predicate, what, ms) {
        return withTimeout(new Promise((resolve) => {
            const test = () => {
                let value;
                try {
                    value = predicate();
                } catch (x) {
                    value = undefined;
                }
                if (value) {
                    this.waiters = this.waiters.filter((w) => w !== test);
                    resolve(value);
                }
            };
            this.waiters.push(test);
            test();
        }), ms || this.opts.stepTimeout, this.label + ": " + what);
    }

    // Handshake and wait for the first successful /meta/connect reply.
    async connect() {
        this.client.connect();
        const hs = await this.waitUntil(() => this.handshakes.find((m) => m.successful), "successful /meta/handshake reply");
        const first = await this.waitUntil(() => this.connects.find((m) => m.successful === true),
            "first successful /meta/connect reply");
        return {handshake: hs, connect: first};
    }

    // Wait until a /meta/connect is outstanding after at least one connect reply.
    async connectHeld() {
        await this.waitUntil(() => this.connects.length >= 1 && this.connectsSent > this.connects.length,
            "an outstanding (held) /meta/connect");
        await sleep(150);
    }

    // subscribe(channel) -> {sub, reply}; listener(channel, data).
    async subscribe(channel, listener) {
        const sub = this.client.subscribe(channel);
        sub.withChannel((ch, data) => listener(ch, copy(data)));
        await withTimeout(deferred(sub, "subscribe " + channel), this.opts.stepTimeout,
            this.label + ": subscription to " + channel);
        const reply = await this.waitUntil(() => this.metaReplies.slice().reverse().find(
            (m) => m.channel === "/meta/subscribe" && deepEqual(m.subscription, channel)), "/meta/subscribe reply for " + channel);
        return {sub, reply};
    }

    async unsubscribe(sub, channel) {
        const before = this.metaReplies.length;
        sub.cancel();
        return this.waitUntil(() => this.metaReplies.slice(before).find(
            (m) => m.channel === "/meta/unsubscribe" && deepEqual(m.subscription, channel)), "/meta/unsubscribe reply for " + channel);
    }

    // publish -> the publish reply (matched by the id Faye gave the message).
    async publish(channel, data) {
        const before = this.outgoing.length;
        const publication = this.client.publish(channel, data);
        let failure = null;
        try {
            await withTimeout(deferred(publication, "publish to " + channel), this.opts.stepTimeout,
                this.label + ": publish to " + channel);
        } catch (x) {
            if (!(x instanceof CheckFailed)) {
                throw x;
            }
            failure = x;
        }
        const sent = this.outgoing.slice(before).find((m) => m.channel === channel && deepEqual(m.data, data));
        check(sent, "publish to " + channel + " never went out");
        const reply = this.replies.find((m) => m.id === sent.id && m.channel === channel)
            || this.metaReplies.find((m) => m.id === sent.id);
        return reply || {error: failure && failure.message, id: sent.id};
    }

    // disconnect -> the /meta/disconnect reply, or null when not connected.
    async disconnect(ms) {
        const before = this.metaReplies.length;
        this.noteTransport();
        const promise = this.client.disconnect();
        if (!promise) {
            return null;
        }
        await withTimeout(deferred(promise, "disconnect"), ms || this.opts.stepTimeout, this.label + ": disconnect");
        return this.metaReplies.slice(before).find((m) => m.channel === "/meta/disconnect") || null;
    }

    eventsOn(channel) {
        return this.events.filter((m) => m.channel === channel);
    }

    resends() {
        return [...this.sendCounts.entries()].filter(([, n]) => n > 1).map(([id, n]) => {
            const m = this.outgoing.find((o) => o.id === id);
            return {id, times: n, channel: m ? m.channel : null};
        });
    }

    connectTransports() {
        return [...new Set(this.wireSends.filter((s) => s.channel === "/meta/connect").map((s) => s.transport))];
    }

    cookies() {
        const jar = this.client._dispatcher.cookies;
        const out = {};
        if (jar) {
            for (const c of jar.getCookiesSync(this.opts.url)) {
                out[c.key] = c.value;
            }
        }
        return out;
    }
}

function expectSuccess(reply, what) {
    check(reply && reply.successful === true, what + " not successful", reply);
    return reply;
}

function checkDelivery(message, channel, data, what) {
    check(message, what + ": nothing delivered");
    check(message.channel === channel, what + ": wrong channel", message);
    check(deepEqual(message.data, data), what + ": data differs", {expected: data, got: message.data});
    check(!("clientId" in message), what + ": delivery carries clientId", message);
    check(!("id" in message), what + ": delivery carries id", message);
    check(!("successful" in message), what + ": delivery carries successful", message);
}

function checkNoResends(ctx, peers) {
    const resends = Object.fromEntries(peers.map((p) => [p.label, p.resends()]));
    ctx.results.resends = resends;
    for (const p of peers) {
        check(resends[p.label].length === 0, p.label + ": Faye resent unanswered messages", resends[p.label]);
    }
}

// ---------------------------------------------------------------- scenarios

SCENARIOS.handshake = async (opts, ctx) => {
    const a = ctx.peer("A");
    const {handshake, connect} = await a.connect();
    await a.connectHeld();
    ctx.results.handshake_reply = handshake;
    ctx.results.first_connect_reply = connect;
    ctx.results.handshake_request = a.outgoing.find((m) => m.channel === "/meta/handshake");
    ctx.results.client_id = a.client._dispatcher.clientId;
    ctx.results.cookies = a.cookies();
    ctx.results.handshake_attempts = a.handshakes.length;
    ctx.results.connect_requests = a.outgoing.filter((m) => m.channel === "/meta/connect");
    ctx.results.connect_transports = a.connectTransports();
    ctx.results.ws_opened = a.wsOpened;
    check(typeof handshake.clientId === "string" && handshake.clientId.length > 0, "no clientId in handshake reply", handshake);
    check(Array.isArray(handshake.supportedConnectionTypes), "no supportedConnectionTypes in handshake reply", handshake);
    check(handshake.supportedConnectionTypes.includes(a.transportType()),
        "transport in use is not listed by the server", {using: a.transportType(), server: handshake.supportedConnectionTypes});
    check(a.client._state === a.client.CONNECTED, "client not connected", a.client._state);
    checkNoResends(ctx, [a]);
};

SCENARIOS.subscribe_publish = async (opts, ctx) => {
    const a = ctx.peer("A");
    await a.connect();
    const channel = "/interop/exact";
    const received = [];
    const {reply: subReply} = await a.subscribe(channel, (ch, data) => received.push({channel: ch, data}));
    ctx.results.subscribe_reply = subReply;
    expectSuccess(subReply, "subscribe " + channel);
    check(subReply.subscription === channel, "subscribe reply does not echo subscription", subReply);
    await a.connectHeld();

    const data = {text: "hello", n: 1, nested: {list: [1, 2.5, "x", null, true]}, unicode: "h\u00e9llo \u2603"};
    const pubReply = await a.publish(channel, data);
    ctx.results.publish_reply = pubReply;
    expectSuccess(pubReply, "publish");
    check(!("data" in pubReply), "publish reply carries data", pubReply);
    await a.waitUntil(() => received.length >= 1, "own publish delivered to the subscriber");
    await sleep(300);
    ctx.results.received = received;
    ctx.results.raw_events = a.events;
    checkDelivery(a.eventsOn(channel)[0], channel, data, "delivery");
    check(a.eventsOn(channel).length === 1, "publish delivered more than once (raw)", a.eventsOn(channel));
    check(received.length === 1, "subscriber called more than once", received);
    checkNoResends(ctx, [a]);
};

SCENARIOS.wildcard = async (opts, ctx) => {
    const a = ctx.peer("A");
    await a.connect();
    const got = {"/chat/*": [], "/news/**": [], "/interop/sentinel": []};
    for (const pattern of Object.keys(got)) {
        const {reply} = await a.subscribe(pattern, (ch) => got[pattern].push(ch));
        expectSuccess(reply, "subscribe " + pattern);
        check(reply.subscription === pattern, "subscribe reply does not echo subscription", reply);
    }
    await a.connectHeld();
    const publishes = [
        "/chat/room",        // /chat/*
        "/chat/room/deep",   // no: * is one segment
        "/chat",             // no
        "/chatter/x",        // no
        "/news/a",           // /news/**
        "/news/a/b/c",       // /news/**
        "/news",             // no
        "/newsroom/a",       // no
        "/other/x",          // no
    ];
    const replies = {};
    for (const channel of publishes) {
        const reply = await a.publish(channel, {channel: channel});
        replies[channel] = reply;
        expectSuccess(reply, "publish to " + channel);
    }
    // Events of one session arrive in order: once the sentinel is here, every
    // earlier matching publish must have arrived too.
    expectSuccess(await a.publish("/interop/sentinel", {last: true}), "publish to sentinel");
    await a.waitUntil(() => got["/interop/sentinel"].length >= 1, "sentinel delivery");
    await sleep(300);
    const rawChannels = a.events.map((m) => m.channel);
    ctx.results.listener_channels = got;
    ctx.results.raw_event_channels = rawChannels;
    ctx.results.publish_replies = replies;
    check(deepEqual(got["/chat/*"], ["/chat/room"]), "/chat/* subscriber got wrong channels", got["/chat/*"]);
    check(deepEqual(got["/news/**"], ["/news/a", "/news/a/b/c"]), "/news/** subscriber got wrong channels", got["/news/**"]);
    const expectedRaw = ["/chat/room", "/news/a", "/news/a/b/c", "/interop/sentinel"];
    check(deepEqual(rawChannels, expectedRaw),
        "server delivered the wrong set of channels (raw, before client-side matching)", {expected: expectedRaw, got: rawChannels});
    for (const m of a.events) {
        checkDelivery(m, m.channel, m.channel === "/interop/sentinel" ? {last: true} : {channel: m.channel}, "delivery on " + m.channel);
    }
    checkNoResends(ctx, [a]);
};

SCENARIOS.two_clients = async (opts, ctx) => {
    const a = ctx.peer("A");
    const b = ctx.peer("B");
    await a.connect();
    await b.connect();
    ctx.results.client_ids = [a.client._dispatcher.clientId, b.client._dispatcher.clientId];
    check(ctx.results.client_ids[0] !== ctx.results.client_ids[1], "both clients got the same clientId");
    ctx.results.cookies = {A: a.cookies(), B: b.cookies()};

    const toB = "/interop/two/to-b";
    const toA = "/interop/two/to-a";
    const gotB = [];
    const gotA = [];
    expectSuccess((await b.subscribe(toB, (ch, data) => gotB.push(data))).reply, "B subscribe");
    expectSuccess((await b.subscribe("/interop/two/b/*", (ch, data) => gotB.push(data))).reply, "B subscribe wildcard");
    expectSuccess((await a.subscribe(toA, (ch, data) => gotA.push(data))).reply, "A subscribe");
    // Deliveries go through the held /meta/connect (or the socket), not by
    // piggy-backing on B's own requests.
    await a.connectHeld();
    await b.connectHeld();

    // Not for B: no subscriber / deeper than B's wildcard / A's channel.
    expectSuccess(await a.publish("/interop/two/nobody", {n: 0}), "A publish to nobody");
    expectSuccess(await a.publish("/interop/two/b/x/y", {n: 0}), "A publish below B's wildcard");
    const t0 = Date.now();
    expectSuccess(await a.publish(toB, {from: "A", n: 1}), "A publish to B");
    await b.waitUntil(() => gotB.length >= 1, "B receives A's publish");
    ctx.results.a_to_b_ms = Date.now() - t0;
    expectSuccess(await a.publish("/interop/two/b/x", {from: "A", n: 2}), "A publish to B's wildcard");
    await b.waitUntil(() => gotB.length >= 2, "B receives A's wildcard publish");
    const t1 = Date.now();
    expectSuccess(await b.publish(toA, {from: "B", n: 3}), "B publish to A");
    await a.waitUntil(() => gotA.length >= 1, "A receives B's publish");
    ctx.results.b_to_a_ms = Date.now() - t1;
    await sleep(300);

    ctx.results.events = {A: a.events, B: b.events};
    ctx.results.transports_used = {A: a.transportType(), B: b.transportType()};
    checkDelivery(b.eventsOn(toB)[0], toB, {from: "A", n: 1}, "delivery to B");
    checkDelivery(b.eventsOn("/interop/two/b/x")[0], "/interop/two/b/x", {from: "A", n: 2}, "wildcard delivery to B");
    checkDelivery(a.eventsOn(toA)[0], toA, {from: "B", n: 3}, "delivery to A");
    check(deepEqual(b.events.map((m) => m.channel), [toB, "/interop/two/b/x"]),
        "B received other than its two deliveries (raw)", b.events);
    check(deepEqual(a.events.map((m) => m.channel), [toA]), "A received other than its one delivery (raw)", a.events);
    check(gotB.length === 2 && gotA.length === 1, "duplicate deliveries", {gotA, gotB});
    checkNoResends(ctx, [a, b]);
};

SCENARIOS.unsubscribe = async (opts, ctx) => {
    const a = ctx.peer("A");
    await a.connect();
    const channel = "/interop/unsub";
    const sentinel = "/interop/unsub-sentinel";
    const received = [];
    const sentinels = [];
    const {sub, reply: subReply} = await a.subscribe(channel, (ch, data) => received.push(data));
    expectSuccess(subReply, "subscribe");
    expectSuccess((await a.subscribe(sentinel, (ch, data) => sentinels.push(data))).reply, "subscribe sentinel");
    await a.connectHeld();

    expectSuccess(await a.publish(channel, {n: 1}), "publish before unsubscribe");
    await a.waitUntil(() => received.length >= 1, "delivery before unsubscribe");

    const unsubReply = await a.unsubscribe(sub, channel);
    ctx.results.unsubscribe_reply = unsubReply;
    expectSuccess(unsubReply, "unsubscribe");
    check(unsubReply.subscription === channel, "unsubscribe reply does not echo subscription", unsubReply);

    const pub2 = await a.publish(channel, {n: 2});
    ctx.results.publish_after_unsubscribe_reply = pub2;
    expectSuccess(pub2, "publish after unsubscribe");
    expectSuccess(await a.publish(sentinel, {n: 3}), "publish sentinel");
    await a.waitUntil(() => sentinels.length >= 1, "sentinel delivery");
    await sleep(300);
    ctx.results.raw_events = a.events;
    ctx.results.received = received;
    check(received.length === 1, "subscriber called after cancel()", received);
    check(deepEqual(a.eventsOn(channel).map((m) => m.data), [{n: 1}]),
        "server still delivered to the unsubscribed session (raw)", a.eventsOn(channel));
    check(sentinels.length === 1, "sentinel delivered more than once", sentinels);
    checkNoResends(ctx, [a]);
};

SCENARIOS.disconnect = async (opts, ctx) => {
    const a = ctx.peer("A");
    await a.connect();
    await a.connectHeld();
    ctx.results.transport_before = a.transportType();
    const connectsBefore = a.connects.length;
    const t0 = Date.now();
    const reply = await a.disconnect();
    ctx.results.disconnect_ms = Date.now() - t0;
    ctx.results.disconnect_reply = reply;
    expectSuccess(reply, "disconnect");
    try {
        await a.waitUntil(() => a.connects.length > connectsBefore, "held /meta/connect returning after disconnect", 3000);
        ctx.results.held_connect_reply = a.connects[a.connects.length - 1];
    } catch (x) {
        ctx.results.held_connect_reply = null;
    }
    const sentAt = a.wireSends.length;
    const outAt = a.outgoing.length;
    await sleep(700);
    ctx.results.state = a.client._state;
    check(a.client._state === a.client.DISCONNECTED, "client not disconnected", a.client._state);
    ctx.results.requests_after_disconnect = a.wireSends.slice(sentAt);
    ctx.results.messages_after_disconnect = a.outgoing.slice(outAt);
    check(a.wireSends.length === sentAt && a.outgoing.length === outAt,
        "client kept sending after disconnect", {wire: a.wireSends.slice(sentAt), messages: a.outgoing.slice(outAt)});
    checkNoResends(ctx, [a]);
};

// Stay connected for --duration ms: with a short server timeout every held
// /meta/connect must come back in time (Faye resends anything unanswered
// after 1.2 x advice.timeout), no re-handshake, no failure; a publish at the
// end is delivered once.
SCENARIOS.idle = async (opts, ctx) => {
    const a = ctx.peer("A");
    await a.connect();
    const channel = "/interop/idle";
    const received = [];
    expectSuccess((await a.subscribe(channel, (ch, data) => received.push(data))).reply, "subscribe");
    const t0 = Date.now();
    await sleep(opts.duration);
    ctx.results.connect_replies = a.connects;
    ctx.results.connects_sent = a.connectsSent;
    ctx.results.handshakes = a.handshakes.length;
    ctx.results.connect_transports = a.connectTransports();
    ctx.results.transport_events = a.transportEvents;
    check(a.handshakes.length === 1, "client re-handshook while idle", a.handshakes);
    check(a.connects.every((m) => m.successful === true), "unsuccessful /meta/connect reply", a.connects);
    const reply = await a.publish(channel, {after: Date.now() - t0});
    expectSuccess(reply, "publish after idle");
    await a.waitUntil(() => received.length >= 1, "delivery after idling");
    await sleep(300);
    ctx.results.received = received;
    check(received.length === 1, "delivery duplicated", received);
    ctx.results.connect_hold_ms = holdTimes(a);
    checkNoResends(ctx, [a]);
};

// How long each /meta/connect took from its (first) send to its reply, from
// the wire log (by id).
function holdTimes(peer) {
    const sentAt = new Map();
    const out = [];
    for (const e of wire) {
        if (e.client !== peer.label || !Array.isArray(e.body)) {
            continue;
        }
        for (const m of e.body) {
            if (m && m.channel === "/meta/connect") {
                if (e.dir === "send" && !sentAt.has(m.id)) {
                    sentAt.set(m.id, e.t);
                } else if (e.dir === "recv" && sentAt.has(m.id)) {
                    out.push({id: m.id, ms: e.t - sentAt.get(m.id)});
                }
            }
        }
    }
    return out;
}

// ---------------------------------------------------------------- main

async function main() {
    const opts = parseArgs(process.argv.slice(2));
    wireEnabled = opts.wire;
    const toStderr = (text) => process.stderr.write(text + "\n");
    const levels = ["debug", "info", "warn", "error", "fatal"];
    const minLevel = Math.max(0, levels.indexOf(opts.logLevel));
    faye.logger = Object.fromEntries(levels.map((l, i) => [l, i >= minLevel ? toStderr : () => {}]));

    const peers = [];
    const ctx = {
        results: {},
        peer(label) {
            const p = new Peer(label, opts);
            peers.push(p);
            return p;
        },
    };
    const output = {
        scenario: opts.scenario,
        client: "faye",
        ok: false,
        url: opts.url,
        requested_transport: opts.transport,
        transport: null,
        elapsed_ms: 0,
        results: ctx.results,
    };
    let exitCode = 1;

    const finish = () => {
        output.transport = peers.length ? peers[0].transportType() : null;
        output.transports = Object.fromEntries(peers.map((p) => [p.label, p.transportType()]));
        output.connect_transports = Object.fromEntries(peers.map((p) => [p.label, p.connectTransports()]));
        output.elapsed_ms = Date.now() - START;
        if (wireEnabled) {
            output.wire = wire;
        }
    };

    const overall = setTimeout(() => {
        output.error = "overall timeout of " + opts.timeout + " ms exceeded";
        output.error_type = "timeout";
        finish();
        emit(output, 2);
    }, opts.timeout);

    try {
        await SCENARIOS[opts.scenario](opts, ctx);
        output.ok = true;
        exitCode = 0;
    } catch (x) {
        output.ok = false;
        output.error = x && x.message ? x.message : String(x);
        output.error_type = x instanceof CheckFailed ? "check" : x instanceof StepTimeout ? "timeout" : "exception";
        if (!(x instanceof CheckFailed) && !(x instanceof StepTimeout)) {
            output.stack = x && x.stack;
        }
        exitCode = x instanceof StepTimeout ? 2 : 1;
    }
    finish();
    // Best-effort cleanup so the server does not keep sessions around.
    await Promise.allSettled(peers.map((p) => p.disconnect(2000).catch(() => null)));
    clearTimeout(overall);
    emit(output, exitCode);
}

let emitted = false;

function emit(output, code) {
    if (emitted) {
        return;
    }
    emitted = true;
    process.stdout.write(JSON.stringify(output) + "\n", () => process.exit(code));
}

main().catch((x) => {
    emit({ok: false, error: String(x && x.stack || x), error_type: "exception"}, 1);
});

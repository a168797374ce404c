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
import {
    START, wire, record, recordSocketEvents, parseMaybeJSON, check, sleep, withTimeout, deepEqual, copy,
    expectSuccess, checkDelivery, CheckFailed, RecordingPeer, runDriver, onePeerScenario,
    handshakeSteps, subscribePublishScenario, wildcardScenario, unsubscribeScenario, disconnectSteps, idleSteps,
} from "./cli_common.mjs";

const require = createRequire(import.meta.url);
const faye = require("faye");
const NodeHttp = require("faye/src/transport/node_http");
const FayeWebSocket = require("faye/src/transport/web_socket");

const TRANSPORTS = ["websocket", "long-polling"];
const SCENARIOS = {};

// ---------------------------------------------------------------- wire log

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
    recordSocketEvents(socket, {client: label, kind: "ws", conn: id});
    const send = socket.send;
    socket.send = function (data) {
        const body = parseMaybeJSON(String(data));
        record({client: label, kind: "ws", conn: id, dir: "send", body: body});
        noteSent(dispatcher, Array.isArray(body) ? body : [body], "websocket");
        return send.call(socket, data);
    };
    return socket;
};


// ---------------------------------------------------------------- peers

// Faye's deferrables (Subscription, Publication) as real promises.
function deferred(d, what) {
    return new Promise((resolve, reject) => {
        d.then((value) => resolve(value), (error) => reject(new CheckFailed(what + " failed: " + JSON.stringify(error))));
    });
}

// One Faye client with message recorders.
class Peer extends RecordingPeer {
    constructor(label, opts) {
        super(label, opts);
        this.client = new faye.Client(opts.url);
        this.client._interopLabel = label;
        this.client._interopPeer = this;
        if (opts.transport === "long-polling") {
            this.client.disable("websocket");
        }
        this.outgoing = [];       // every message Faye sent (once per message, after extensions)
        this.sendCounts = new Map();  // id -> number of times handed to a connection
        this.wireSends = [];
        this.wsOpened = 0;
        this.transportEvents = [];
        this.lastTransport = null;

        const self = this;
        this.client.addExtension({
            incoming(message, callback) {
                const m = copy(message);
                self.noteIncoming(m);
                if (m.channel === "/meta/handshake") {
                    self.handshakes.push(m);
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

    startHandshake() {
        this.client.connect();
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

    // subscribe(channel) -> {sub, reply}; listener({channel, data}).
    async subscribe(channel, listener) {
        const sub = this.client.subscribe(channel);
        sub.withChannel((ch, data) => listener({channel: ch, data: copy(data)}));
        await withTimeout(deferred(sub, "subscribe " + channel), this.opts.stepTimeout,
            this.label + ": subscription to " + channel);
        const reply = await this.waitUntil(() => this.metaReplies.slice().reverse().find(
            (m) => m.channel === "/meta/subscribe" && deepEqual(m.subscription, channel)), "/meta/subscribe reply for " + channel);
        return {sub, reply};
    }

    async unsubscribe(sub) {
        const channel = sub._channels;
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
    const replies = await a.connect();
    await a.connectHeld();
    ctx.results.handshake_request = a.outgoing.find((m) => m.channel === "/meta/handshake");
    ctx.results.client_id = a.client._dispatcher.clientId;
    ctx.results.connect_requests = a.outgoing.filter((m) => m.channel === "/meta/connect");
    ctx.results.connect_transports = a.connectTransports();
    ctx.results.ws_opened = a.wsOpened;
    handshakeSteps(ctx, a, replies);
    check(a.client._state === a.client.CONNECTED, "client not connected", a.client._state);
    checkNoResends(ctx, [a]);
};

// One client "A", deliveries through a held /meta/connect; no resends.
function fayeScenario(steps) {
    return onePeerScenario(steps, {holdConnect: true, settleMs: 300}, (ctx, a) => checkNoResends(ctx, [a]));
}

SCENARIOS.subscribe_publish = fayeScenario(subscribePublishScenario);

SCENARIOS.wildcard = fayeScenario(wildcardScenario);

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
    expectSuccess((await b.subscribe(toB, (m) => gotB.push(m.data))).reply, "B subscribe");
    expectSuccess((await b.subscribe("/interop/two/b/*", (m) => gotB.push(m.data))).reply, "B subscribe wildcard");
    expectSuccess((await a.subscribe(toA, (m) => gotA.push(m.data))).reply, "A subscribe");
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

SCENARIOS.unsubscribe = fayeScenario(unsubscribeScenario);

SCENARIOS.disconnect = fayeScenario(async (ctx, a) => {
    await disconnectSteps(ctx, a);
    const sentAt = a.wireSends.length;
    const outAt = a.outgoing.length;
    await sleep(700);
    ctx.results.state = a.client._state;
    check(a.client._state === a.client.DISCONNECTED, "client not disconnected", a.client._state);
    ctx.results.requests_after_disconnect = a.wireSends.slice(sentAt);
    ctx.results.messages_after_disconnect = a.outgoing.slice(outAt);
    check(a.wireSends.length === sentAt && a.outgoing.length === outAt,
        "client kept sending after disconnect", {wire: a.wireSends.slice(sentAt), messages: a.outgoing.slice(outAt)});
});

// Stay connected for --duration ms: with a short server timeout every held
// /meta/connect must come back in time (Faye resends anything unanswered
// after 1.2 x advice.timeout), no re-handshake, no failure; a publish at the
// end is delivered once.
SCENARIOS.idle = fayeScenario(async (ctx, a) => {
    await idleSteps(ctx, a, {
        afterIdle() {
            ctx.results.connect_transports = a.connectTransports();
            ctx.results.transport_events = a.transportEvents;
        },
    });
    ctx.results.connect_hold_ms = holdTimes(a);
});

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

runDriver({
    script: "faye_client.mjs",
    scenarios: SCENARIOS,
    transports: TRANSPORTS,
    transportNote: " (default: Faye's own choice)",
    options: {"duration": {default: 3500}},
    setup: (opts) => {
        const toStderr = (text) => process.stderr.write(text + "\n");
        const levels = ["debug", "info", "warn", "error", "fatal"];
        const minLevel = Math.max(0, levels.indexOf(opts.logLevel));
        faye.logger = Object.fromEntries(levels.map((l, i) => [l, i >= minLevel ? toStderr : () => {}]));
    },
    newPeer: (label, opts) => new Peer(label, opts),
    output: {client: "faye"},
    finish: (output, peers) => {
        output.connect_transports = Object.fromEntries(peers.map((p) => [p.label, p.connectTransports()]));
    },
});

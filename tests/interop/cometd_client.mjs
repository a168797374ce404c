#!/usr/bin/env node
// Interop driver: runs one scenario with the official CometD JavaScript client
// (npm `cometd` 9.0.0) on Node through `cometd-nodejs-client` 2.0.0, against a
// Bayeux server, and prints ONE JSON line with the results on stdout.
//
//   node cometd_client.mjs URL SCENARIO [--transport long-polling|websocket|callback-polling]
//        [--timeout MS] [--step-timeout MS] [--duration MS (idle)]
//        [--messages N] [--outage MS] [--cut blackhole|reset|halfopen] (ack_outage, recover*)
//        [--log-level warn|info|debug] [--no-wire]
//
// Exit status: 0 scenario passed, 1 a check failed, 2 timed out, 3 bad usage.
// The JSON line always has: scenario, ok, transport (type actually in use),
// url, elapsed_ms, results (scenario specific), error (when !ok), wire (what
// went over the wire, unless --no-wire).
//
// Everything else (CometD logging) goes to stderr.
//
// Notes on cometd-nodejs-client 2.0.0 (read from its source):
//  - adapt() installs window.XMLHttpRequest / window.WebSocket (package `ws`).
//  - Its XMLHttpRequest keeps server cookies (Set-Cookie) in ONE jar per
//    adapt() call, keyed by host name and shared by every CometD instance of
//    the process. A transport `context.cookieStore` is only used to *read*
//    cookies; Set-Cookie is always written to the shared jar. Two CometD
//    objects in one process therefore present the same BAYEUX_BROWSER cookie
//    and trip the server's multiple-clients logic. We give each client its own
//    jar (see JarXMLHttpRequest) unless the scenario wants a shared one.
//  - The WebSocket upgrade request carries no cookies at all.
//  - callback-polling needs a browser DOM (<script> injection); we replace its
//    jsonpSend() with an HTTP GET that evaluates the `callback([...])` body.

import {adapt} from "cometd-nodejs-client";
import {XMLHttpRequest as NodeXMLHttpRequest} from "cometd-nodejs-client/src/XMLHttpRequest.js";
import {CometD, CallbackPollingTransport, AckExtension, TimeSyncExtension} from "cometd";
import * as nodeHttp from "node:http";
import * as nodeHttps from "node:https";
import * as net from "node:net";
import {writeFileSync} from "node:fs";
import {RecoveryExtension} from "../../engine/static/cometd-recovery.js";
import {WebSocket as WsWebSocket} from "ws";
import {
    START, wire, record, recordSocketEvents, parseMaybeJSON, check, sleep, withTimeout, deepEqual, copy,
    expectSuccess, checkDelivery, RecordingPeer, runDriver, onePeerScenario,
    handshakeSteps, subscribePublishScenario, wildcardScenario, unsubscribeScenario, disconnectSteps, idleSteps,
} from "./cli_common.mjs";

const TRANSPORTS = ["websocket", "long-polling", "callback-polling"];
const CUT_MODES = ["blackhole", "reset", "halfopen"];
const SCENARIOS = {};

// ---------------------------------------------------------------- cookies

function cookieHeaderFor(jar, hostname) {
    const perHost = jar && jar[hostname];
    return perHost ? Object.values(perHost).join("; ") : "";
}

function storeSetCookie(jar, hostname, header) {
    // Same semantics as cometd-nodejs-client: keep name=value, ignore attributes.
    const nameValue = header.split(";")[0].trim();
    const equal = nameValue.indexOf("=");
    if (equal > 0) {
        let perHost = jar[hostname];
        if (!perHost) {
            perHost = jar[hostname] = {};
        }
        perHost[nameValue.substring(0, equal)] = nameValue;
    }
}

// ---------------------------------------------------------------- Node adaptation

// A process-wide jar, used by clients created with {sharedJar: true}; it plays
// the role of cometd-nodejs-client's own global jar.
const SHARED_JAR = {};

// cometd-nodejs-client's XMLHttpRequest with two additions:
//  1. per-client cookie jar: the LongPollingTransport copies `transport.context`
//     into each XHR; we point both the read side (context.cookieStore, used by
//     the adapter) and the write side (options.globalCookies) at the jar found
//     in that context.
//  2. wire recording of each request/response.
class JarXMLHttpRequest extends NodeXMLHttpRequest {
    #options;
    #context;
    #wire = null;

    constructor() {
        const options = {globalCookies: SHARED_JAR};
        super(options);
        this.#options = options;
    }

    get context() {
        return this.#context;
    }

    set context(context) {
        this.#context = context;
        if (context && context.cookieStore) {
            this.#options.globalCookies = context.cookieStore;
        }
    }

    open(method, uri) {
        this.#wire = {method: method, url: String(uri)};
        super.open(method, uri);
    }

    send(data) {
        const ctx = this.#context || {};
        const url = new URL(this.#wire.url);
        record({
            client: ctx.label || "?",
            kind: "http",
            dir: "send",
            method: this.#wire.method,
            path: url.pathname + url.search,
            cookie: cookieHeaderFor(this.#options.globalCookies, url.hostname),
            body: parseMaybeJSON(data),
        });
        const onload = this.onload;
        this.onload = () => {
            record({
                client: ctx.label || "?",
                kind: "http",
                dir: "recv",
                path: url.pathname,
                status: this.status,
                body: parseMaybeJSON(this.responseText),
            });
            if (onload) {
                onload.call(this);
            }
        };
        const onerror = this.onerror;
        this.onerror = (x) => {
            record({
                client: ctx.label || "?",
                kind: "http",
                dir: "error",
                path: url.pathname,
                status: this.status,
                error: this.statusText || (x && x.message) || "error",
            });
            if (onerror) {
                onerror.call(this, x);
            }
        };
        super.send(data);
    }
}

// `ws` WebSocket with wire recording. The CometD WebSocketTransport creates it
// without any reference to the CometD object, so frames are labelled by
// connection number only.
let wsCounter = 0;
// --cookie: sent with every request and WebSocket upgrade, as a browser sends
// the cookies of the application's login (the Node adapter sends none on
// upgrades by itself).
let EXTRA_COOKIE = null;

class RecordingWebSocket extends WsWebSocket {
    constructor(url, protocols, options) {
        const headers = EXTRA_COOKIE ? {Cookie: EXTRA_COOKIE} : {};
        super(url, protocols, {...(options || {}), headers: {...((options || {}).headers || {}), ...headers}});
        const id = "ws" + (++wsCounter);
        this._wireId = id;
        record({kind: "ws", conn: id, dir: "open-request", url: String(url), protocol: protocols || null});
        recordSocketEvents(this, {kind: "ws", conn: id});
    }

    send(data, ...rest) {
        record({kind: "ws", conn: this._wireId, dir: "send", body: parseMaybeJSON(String(data))});
        return super.send(data, ...rest);
    }
}

// callback-polling without a DOM: an HTTP GET whose body must be exactly
// `<callbackName>(<JSON array>)` (optionally preceded by comments and followed
// by `;`), which is what a browser would run as a script.
class NodeCallbackPollingTransport extends CallbackPollingTransport {
    #counter = 0;

    jsonpSend(packet) {
        const callbackName = "_cometd_jsonp_" + this.#counter++;
        let url = packet.url;
        url += url.indexOf("?") < 0 ? "?" : "&";
        url += "jsonp=" + callbackName;
        url += "&message=" + encodeURIComponent(packet.body);
        const target = new URL(url);
        const ctx = this.context || {};
        const jar = ctx.cookieStore || SHARED_JAR;
        const headers = Object.assign({}, packet.headers || {});
        const cookie = cookieHeaderFor(jar, target.hostname);
        if (cookie) {
            headers["Cookie"] = cookie;
        }
        record({
            client: ctx.label || "?",
            kind: "jsonp",
            dir: "send",
            method: "GET",
            path: target.pathname,
            cookie: cookie,
            callback: callbackName,
            body: parseMaybeJSON(packet.body),
        });
        const client = target.protocol === "https:" ? nodeHttps : nodeHttp;
        const request = client.request(target, {method: "GET", headers: headers}, (response) => {
            const setCookies = response.headers["set-cookie"] || [];
            for (const header of setCookies) {
                storeSetCookie(jar, target.hostname, header);
            }
            let text = "";
            response.setEncoding("utf8");
            response.on("data", (chunk) => text += chunk);
            response.on("end", () => {
                record({
                    client: ctx.label || "?",
                    kind: "jsonp",
                    dir: "recv",
                    path: target.pathname,
                    status: response.statusCode,
                    contentType: response.headers["content-type"] || null,
                    body: text,
                });
                if (response.statusCode !== 200) {
                    packet.onError("jsonp error", new Error("HTTP " + response.statusCode));
                    return;
                }
                // A browser would also run a leading comment (Faye sends `/**/cb(...)`).
                const script = text.replace(/^\s*(?:\/\*[\s\S]*?\*\/\s*)*/, "");
                const m = /^([A-Za-z0-9_.$-]+)\(([\s\S]*)\)\s*;?\s*$/.exec(script);
                if (!m || m[1] !== callbackName) {
                    packet.onError("jsonp error", new Error("not a " + callbackName + "(...) script: " + text.substring(0, 200)));
                    return;
                }
                let messages;
                try {
                    messages = JSON.parse(m[2]);
                } catch (x) {
                    packet.onError("jsonp error", x);
                    return;
                }
                packet.onSuccess(messages);
            });
            response.on("error", (x) => packet.onError("jsonp error", x));
        });
        request.on("error", (x) => {
            record({client: ctx.label || "?", kind: "jsonp", dir: "error", path: target.pathname, error: x.message});
            packet.onError("jsonp error", x);
        });
        request.end();
    }
}

function installNodeAdapter(opts) {
    EXTRA_COOKIE = opts.cookie;
    adapt();
    // CometD logs info/debug through console.log/info/debug: keep stdout for
    // the single JSON result line.
    const toStderr = (...args) => console.error(...args);
    console.log = toStderr;
    console.info = toStderr;
    console.debug = toStderr;
    window.console = console;
    window.XMLHttpRequest = JarXMLHttpRequest;
    window.WebSocket = RecordingWebSocket;
}

// ---------------------------------------------------------------- peers

// One CometD client with its own cookie jar and message recorders.
class Peer extends RecordingPeer {
    // Options: sharedJar (use the process-wide jar), url (instead of the
    // command line's, e.g. a proxy), config (extra cometd.configure() keys).
    constructor(label, opts, {sharedJar = false, url = null, config = null} = {}) {
        super(label, opts);
        this.url = url || opts.url;
        this.cometd = new CometD(label);
        this.jar = sharedJar ? SHARED_JAR : {};
        if (opts.cookie) {  // (the long-polling side of --cookie: in the client's jar)
            const host = new URL(this.url).hostname;
            const [name] = opts.cookie.split("=", 1);
            this.jar[host] = Object.assign(this.jar[host] || {}, {[name]: opts.cookie});
        }
        this.sentConnects = [];
        this.sentSubscribes = [];  // as sent: after the other extensions (registered later) ran
        this.connectFailures = [];  // unsuccessful /meta/connect (server replies and local failures)

        const cometd = this.cometd;
        // Replace the DOM-based callback-polling transport by the Node one.
        if (cometd.unregisterTransport("callback-polling")) {
            cometd.registerTransport("callback-polling", new NodeCallbackPollingTransport());
        }
        if (opts.transport) {
            for (const type of cometd.getTransportTypes().slice()) {
                if (type !== opts.transport) {
                    cometd.unregisterTransport(type);
                }
            }
            check(cometd.getTransportTypes().length === 1,
                "transport " + opts.transport + " not available in this client", cometd.getTransportTypes());
        }
        for (const type of cometd.getTransportTypes()) {
            cometd.findTransport(type).context = {cookieStore: this.jar, label: label};
        }
        cometd.configure(Object.assign({url: this.url, logLevel: opts.logLevel}, config || {}));

        const self = this;
        cometd.registerExtension("interop-recorder", {
            incoming(message) {
                self.noteIncoming(copy(message));
                self.wake();
                return message;
            },
            outgoing(message) {
                if (message.channel === "/meta/connect") {
                    self.connectsSent += 1;
                    self.sentConnects.push(copy(message));
                    self.wake();
                } else if (message.channel === "/meta/subscribe") {
                    self.sentSubscribes.push(copy(message));
                }
                return message;
            },
        });
        // Listeners also see the client's local failures.
        cometd.addListener("/meta/handshake", (m) => {
            this.handshakes.push(copy(m));
            this.wake();
        });
        cometd.addListener("/meta/connect", (m) => {
            if (!m.successful) {
                this.connectFailures.push(copy(m));
                this.wake();
            }
        });
    }

    startHandshake() {
        this.cometd.handshake();
    }

    transportType() {
        const t = this.cometd.getTransport();
        return t ? t.type : null;
    }

    subscribe(channel, listener) {
        return withTimeout(new Promise((resolve) => {
            const sub = this.cometd.subscribe(channel, listener, (reply) => resolve({sub, reply: copy(reply)}));
        }), this.opts.stepTimeout, this.label + ": /meta/subscribe reply for " + channel);
    }

    unsubscribe(sub) {
        return withTimeout(new Promise((resolve) => {
            this.cometd.unsubscribe(sub, (reply) => resolve(copy(reply)));
        }), this.opts.stepTimeout, this.label + ": /meta/unsubscribe reply for " + sub.channel);
    }

    publish(channel, data) {
        return withTimeout(new Promise((resolve) => {
            this.cometd.publish(channel, data, (reply) => resolve(copy(reply)));
        }), this.opts.stepTimeout, this.label + ": publish reply for " + channel);
    }

    disconnect(ms) {
        if (this.cometd.isDisconnected()) {
            return Promise.resolve(null);
        }
        return withTimeout(new Promise((resolve) => {
            this.cometd.disconnect((reply) => resolve(copy(reply)));
        }), ms || this.opts.stepTimeout, this.label + ": /meta/disconnect reply");
    }

    cookies() {
        return Object.assign({}, ...Object.values(this.jar).map((perHost) => Object.assign({}, perHost)));
    }
}

function multipleClientsAdvice(peer) {
    return peer.metaReplies.some((m) => m.advice && m.advice["multiple-clients"] === true);
}

// ---------------------------------------------------------------- scenarios

SCENARIOS.handshake = async (opts, ctx) => {
    const a = ctx.peer("A");
    const replies = await a.connect();
    ctx.results.client_id = a.cometd.getClientId();
    handshakeSteps(ctx, a, replies);
    await a.connectHeld();
    ctx.results.second_connect_request = a.sentConnects[1] || null;
    check(a.cometd.getStatus() === "connected", "status is not connected", a.cometd.getStatus());
};

SCENARIOS.subscribe_publish = onePeerScenario(subscribePublishScenario, {settleMs: 200});

SCENARIOS.wildcard = onePeerScenario(wildcardScenario, {settleMs: 200});

async function twoClients(opts, ctx, sharedJar) {
    const a = ctx.peer("A", {sharedJar});
    const b = ctx.peer("B", {sharedJar});
    await a.connect();
    await b.connect();
    ctx.results.client_ids = [a.cometd.getClientId(), b.cometd.getClientId()];
    check(a.cometd.getClientId() !== b.cometd.getClientId(), "both clients got the same clientId");
    ctx.results.cookies = {A: a.cookies(), B: b.cookies()};

    const toB = "/interop/two/to-b";
    const toA = "/interop/two/to-a";
    const gotB = [];
    const gotA = [];
    expectSuccess((await b.subscribe(toB, (m) => gotB.push(copy(m)))).reply, "B subscribe");
    expectSuccess((await a.subscribe(toA, (m) => gotA.push(copy(m)))).reply, "A subscribe");
    // Make sure both sessions hold (or at least re-issued) a /meta/connect, so
    // that delivery happens through the long poll and not by piggy-backing.
    await a.connectHeld();
    await b.connectHeld();

    const t0 = Date.now();
    expectSuccess(await a.publish(toB, {from: "A", n: 1}), "A publish to B");
    await b.waitUntil(() => gotB.length >= 1, "B receives A's publish");
    ctx.results.a_to_b_ms = Date.now() - t0;
    const t1 = Date.now();
    expectSuccess(await b.publish(toA, {from: "B", n: 2}), "B publish to A");
    await a.waitUntil(() => gotA.length >= 1, "A receives B's publish");
    ctx.results.b_to_a_ms = Date.now() - t1;
    await sleep(200);

    checkDelivery(b.eventsOn(toB)[0], toB, {from: "A", n: 1}, "delivery to B");
    checkDelivery(a.eventsOn(toA)[0], toA, {from: "B", n: 2}, "delivery to A");
    check(a.eventsOn(toB).length === 0, "A received a message on a channel it did not subscribe", a.events);
    check(b.eventsOn(toA).length === 0, "B received a message on a channel it did not subscribe", b.events);
    check(gotB.length === 1 && gotA.length === 1, "duplicate deliveries", {gotA, gotB});
    ctx.results.multiple_clients_advice = {A: multipleClientsAdvice(a), B: multipleClientsAdvice(b)};
    ctx.results.connect_replies = {A: a.connects, B: b.connects};
}

SCENARIOS.two_clients = async (opts, ctx) => {
    await twoClients(opts, ctx, false);
    const cA = ctx.results.cookies.A;
    const cB = ctx.results.cookies.B;
    if (cA.BAYEUX_BROWSER !== undefined || cB.BAYEUX_BROWSER !== undefined) {
        check(cA.BAYEUX_BROWSER !== cB.BAYEUX_BROWSER, "separate jars but same BAYEUX_BROWSER", ctx.results.cookies);
    }
};

// Both clients share one cookie jar, like two tabs of one browser (and like
// two CometD objects with cometd-nodejs-client's default jar): over HTTP the
// server should apply its multiple-clients logic; delivery must still work.
SCENARIOS.shared_cookie_jar = async (opts, ctx) => {
    await twoClients(opts, ctx, true);
};

SCENARIOS.batch = async (opts, ctx) => {
    const a = ctx.peer("A");
    await a.connect();
    await a.connectHeld();
    const channel = "/interop/batch";
    const data = {batched: true};
    const received = [];
    let subReply = null;
    let pubReply = null;
    const wireStart = wire.length;
    a.cometd.batch(() => {
        a.cometd.subscribe(channel, (m) => received.push(copy(m)), (r) => subReply = copy(r));
        a.cometd.publish(channel, data, (r) => pubReply = copy(r));
    });
    await a.waitUntil(() => subReply && pubReply, "subscribe and publish replies of the batch");
    ctx.results.subscribe_reply = subReply;
    ctx.results.publish_reply = pubReply;
    expectSuccess(subReply, "batched subscribe");
    expectSuccess(pubReply, "batched publish");
    await a.waitUntil(() => received.length >= 1, "delivery of the batched publish");
    checkDelivery(a.eventsOn(channel)[0], channel, data, "batched delivery");
    // How the batch went over the wire: one request/frame with both messages.
    const sent = wire.slice(wireStart).filter((e) => e.dir === "send" && Array.isArray(e.body) && (e.client === "A" || e.kind === "ws"));
    const bodies = sent.map((e) => e.body.map((m) => m.channel));
    ctx.results.requests_after_batch = bodies;
    if (opts.wire) {
        check(bodies.some((channels) => channels.includes("/meta/subscribe") && channels.includes(channel)),
            "subscribe and publish were not sent in one request", bodies);
    }
};

SCENARIOS.unsubscribe = onePeerScenario(unsubscribeScenario, {settleMs: 300});

SCENARIOS.disconnect = onePeerScenario(async (ctx, a) => {
    await disconnectSteps(ctx, a);
    const sentAt = wire.length;
    const connectsSentAt = a.connectsSent;
    await sleep(500);
    ctx.results.status = a.cometd.getStatus();
    check(a.cometd.isDisconnected(), "client not disconnected", a.cometd.getStatus());
    const later = wire.slice(sentAt).filter((e) => e.dir === "send" && e.client === "A");
    ctx.results.requests_after_disconnect = later.map((e) => e.body);
    check(a.connectsSent === connectsSentAt, "client kept sending /meta/connect after disconnect", later);
});

// Stay connected for --duration ms (default 4000): with a short server
// timeout the held /meta/connect must come back successful each time and the
// client must simply re-poll (no failures, no re-handshake); a publish at the
// end still arrives, once.
SCENARIOS.idle = async (opts, ctx) => {
    const a = ctx.peer("A");
    const failures = [];
    a.cometd.addListener("/meta/unsuccessful", (m) => failures.push(copy(m)));
    await a.connect();
    await idleSteps(ctx, a, {
        afterIdle() {
            ctx.results.failures = failures;
            check(failures.length === 0, "/meta/unsuccessful while idle", failures);
        },
    });
};

// The JS AckExtension: events must travel only with /meta/connect replies,
// each connect reply carries an increasing integer ext.ack, and every event
// arrives once, in order.
SCENARIOS.ack = async (opts, ctx) => {
    const a = ctx.peer("A");
    a.cometd.registerExtension("ack", new AckExtension());
    const {handshake} = await a.connect();
    ctx.results.handshake_ext = handshake.ext || null;
    const ackField = handshake.ext && handshake.ext.ack;
    check(ackField === true || (ackField && ackField.enabled === true),
        "handshake reply does not enable acks (ext.ack)", handshake);
    const channel = "/interop/ack";
    const received = [];
    expectSuccess((await a.subscribe(channel, (m) => received.push(m.data.n))).reply, "subscribe");
    await a.connectHeld();
    for (let n = 1; n <= 3; ++n) {
        expectSuccess(await a.publish(channel, {n}), "publish " + n);
    }
    await a.waitUntil(() => received.length >= 3, "3 acknowledged deliveries");
    await sleep(200);
    ctx.results.received = received;
    check(deepEqual(received, [1, 2, 3]), "deliveries missing, duplicated or out of order", received);
    const acks = a.connects.filter((m) => m.successful).map((m) => m.ext && m.ext.ack);
    ctx.results.connect_reply_acks = acks;
    check(acks.every((x) => Number.isInteger(x)), "a /meta/connect reply lacks an integer ext.ack", acks);
    for (let i = 1; i < acks.length; ++i) {
        check(acks[i] === acks[i - 1] + 1, "ext.ack of connect replies does not grow by one", acks);
    }
    ctx.results.connect_request_acks = a.sentConnects.map((m) => m.ext && m.ext.ack);
    // Events only with connect replies (no piggy-backing, no direct WS writes).
    if (opts.wire) {
        const bad = wire.filter((e) => e.dir === "recv" && (e.client === "A" || e.kind === "ws")).map((e) => {
            let body = e.body;
            if (e.kind === "jsonp" && typeof body === "string") {
                const i = body.indexOf("(");
                body = parseMaybeJSON(body.substring(i + 1, body.lastIndexOf(")")));
            }
            return body;
        }).filter((body) => Array.isArray(body)
            && body.some((m) => m && !String(m.channel).startsWith("/meta/") && "data" in m)
            && !body.some((m) => m && m.channel === "/meta/connect"));
        ctx.results.events_outside_connect = bad;
        check(bad.length === 0, "events delivered outside a /meta/connect reply while acks are on", bad);
    }
};

// The JS TimeSyncExtension: meta replies carry ext.timesync {tc, ts, p[, a]}.
SCENARIOS.timesync = async (opts, ctx) => {
    const a = ctx.peer("A");
    const timesync = new TimeSyncExtension();
    a.cometd.registerExtension("timesync", timesync);
    await a.connect();
    await a.connectHeld();
    const sent = a.sentConnects.map((m) => m.ext && m.ext.timesync);
    ctx.results.sent_timesync = sent;
    check(sent.every((t) => t && typeof t.tc === "number"), "client did not send ext.timesync", sent);
    const replies = a.metaReplies.filter((m) => m.successful && (m.channel === "/meta/handshake" || m.channel === "/meta/connect"));
    const ts = replies.map((m) => m.ext && m.ext.timesync);
    ctx.results.reply_timesync = ts;
    for (const t of ts) {
        check(t && Number.isInteger(t.tc) && Number.isInteger(t.ts) && Number.isInteger(t.p),
            "meta reply without integer ext.timesync tc/ts/p", ts);
    }
    // Each connect reply echoes the tc of its own request.
    const sentTc = Object.fromEntries(a.sentConnects.map((m) => [m.id, m.ext.timesync.tc]));
    for (const m of a.connects.filter((c) => c.successful && c.id in sentTc)) {
        check(m.ext.timesync.tc === sentTc[m.id], "connect reply does not echo its request's tc", {sent: sentTc[m.id], reply: m});
    }
    ctx.results.time_offset = timesync.getTimeOffset();
    ctx.results.network_lag = timesync.getNetworkLag();
    check(Math.abs(timesync.getTimeOffset()) < 1000, "time offset to a local server above 1 s", timesync.getTimeOffset());
};

// Default client (no forced transport: websocket first) against a server that
// does not offer websocket (--allowed-transports long-polling,callback-polling):
// both clients must end up on long-polling and work normally.
SCENARIOS.fallback = async (opts, ctx) => {
    const a = ctx.peer("A");
    const b = ctx.peer("B");
    const {handshake} = await a.connect();
    await b.connect();
    ctx.results.handshake_reply = handshake;
    ctx.results.handshake_listener_messages = a.handshakes;
    ctx.results.client_transports = {A: a.transportType(), B: b.transportType()};
    const channel = "/interop/fallback";
    const received = [];
    const {reply: subReply} = await a.subscribe(channel, (m) => received.push(copy(m.data)));
    ctx.results.subscribe_reply = subReply;
    expectSuccess(subReply, "A subscribe");
    await a.connectHeld();
    await b.connectHeld();
    ctx.results.publish_replies = [await b.publish(channel, {from: "B"})];
    expectSuccess(ctx.results.publish_replies[0], "B publish");
    await a.waitUntil(() => received.length >= 1, "A receives B's publish");
    ctx.results.publish_replies.push(await a.publish(channel, {from: "A"}));
    expectSuccess(ctx.results.publish_replies[1], "A publish");
    await a.waitUntil(() => received.length >= 2, "A receives its own publish");
    await sleep(300);
    ctx.results.received = received;
    ctx.results.ws_attempts = wire.filter((e) => e.kind === "ws" && e.dir === "open-request").length;
    ctx.results.ws_opened = wire.filter((e) => e.kind === "ws" && e.dir === "open").length;
    check(deepEqual(received, [{from: "B"}, {from: "A"}]), "deliveries missing, duplicated or out of order", received);
    checkDelivery(a.eventsOn(channel)[0], channel, {from: "B"}, "delivery of B's publish");
    check(b.events.length === 0, "B received events without subscribing", b.events);
    check(a.transportType() === b.transportType(), "the two clients ended on different transports", ctx.results.client_transports);
};

// A TCP proxy on a loopback port between one client and the server that can
// be cut and restored:
//  - cut("blackhole"): stop listening (new connections are refused) and drop
//    every client-side connection; the server-side halves stay open and what
//    the server writes into them (e.g. a held /meta/connect answered with
//    events) is swallowed, as on a connection lost in the network.
//  - cut("reset"): stop listening and reset both halves of every connection.
//  - cut("halfopen"): like blackhole, but restore() leaves the server-side
//    halves open (still swallowing) until the end: the server never learns
//    that the old connections are dead, as after a silent network partition.
//  - restore(): close what is left (except halfopen) and listen again on the
//    same port.
class CuttableProxy {
    #counter = 0;

    constructor(targetUrl) {
        const target = new URL(targetUrl);
        this.targetHost = target.hostname;
        this.targetPort = Number(target.port || 80);
        this.port = 0;
        this.server = null;
        this.pairs = new Set();
        this.stats = {accepted: 0, cuts: [], restores: 0, dropped_bytes_to_client: 0, dropped_bytes_to_server: 0};
    }

    urlFor(targetUrl) {
        const u = new URL(targetUrl);
        u.port = String(this.port);
        return u.toString();
    }

    listen(port) {
        return new Promise((resolve, reject) => {
            const server = net.createServer((socket) => this.#accept(socket));
            server.once("error", reject);
            server.listen(port || 0, "127.0.0.1", () => {
                server.removeListener("error", reject);
                server.on("error", () => {});
                this.server = server;
                this.port = server.address().port;
                record({kind: "proxy", conn: "px", dir: "listen", url: "127.0.0.1:" + this.port});
                resolve();
            });
        });
    }

    #accept(client) {
        const id = "px" + (++this.#counter);
        const upstream = net.connect(this.targetPort, this.targetHost);
        const pair = {id, client, upstream, blackhole: false};
        this.pairs.add(pair);
        this.stats.accepted += 1;
        client.setNoDelay(true);
        upstream.setNoDelay(true);
        client.on("data", (data) => {
            if (pair.blackhole || upstream.destroyed) {
                this.stats.dropped_bytes_to_server += data.length;
            } else {
                upstream.write(data);
            }
        });
        upstream.on("data", (data) => {
            if (pair.blackhole || client.destroyed) {
                this.stats.dropped_bytes_to_client += data.length;
            } else {
                client.write(data);
            }
        });
        const closed = () => {
            if (!pair.blackhole) {
                client.destroy();
                upstream.destroy();
            }
            if (client.destroyed && upstream.destroyed) {
                this.pairs.delete(pair);
            }
        };
        client.on("close", closed);
        upstream.on("close", closed);
        client.on("error", () => {});
        upstream.on("error", () => {});
    }

    cut(mode) {
        const server = this.server;
        this.server = null;
        if (server) {
            server.close();
        }
        this.stats.cuts.push({mode, t: Date.now() - START, connections: this.pairs.size});
        record({kind: "proxy", conn: "px", dir: "cut", reason: mode, body: {connections: this.pairs.size}});
        for (const pair of this.pairs) {
            if (mode === "blackhole" || mode === "halfopen") {
                pair.blackhole = true;
                pair.keep = mode === "halfopen";
                pair.client.destroy();
            } else {
                pair.client.resetAndDestroy();
                pair.upstream.resetAndDestroy();
            }
        }
    }

    async restore() {
        for (const pair of [...this.pairs]) {
            if (!pair.keep) {
                pair.client.destroy();
                pair.upstream.destroy();
                this.pairs.delete(pair);
            }
        }
        this.stats.restores += 1;
        await this.listen(this.port);
        record({kind: "proxy", conn: "px", dir: "restore", body: {dropped_bytes_to_client: this.stats.dropped_bytes_to_client}});
    }

    close() {
        if (this.server) {
            this.server.close();
            this.server = null;
        }
        for (const pair of this.pairs) {
            pair.client.destroy();
            pair.upstream.destroy();
        }
        this.pairs.clear();
    }
}

// Peer A through a CuttableProxy (closed with the scenario), with a small
// back-off so that it retries promptly once the proxy is back.
async function peerBehindCut(opts, ctx) {
    const proxy = new CuttableProxy(opts.url);
    await proxy.listen(0);
    ctx.cleanup.push(() => proxy.close());
    ctx.results.proxy = proxy.stats;
    const a = ctx.peer("A", {url: proxy.urlFor(opts.url), config: {backoffIncrement: 250, maxBackoff: 1000}});
    return {proxy, a};
}

// Acknowledged delivery across a cut connection (server --ack-extension):
// client A (JS AckExtension) reaches the server through a CuttableProxy, B
// directly. After one acknowledged warm-up delivery the proxy is cut (--cut,
// default blackhole); B publishes --messages N (default 20) while A is cut
// off; the proxy is restored after --outage ms (default 2000). A must then
// receive all N, in order, none twice, without a new handshake, followed by a
// sentinel published after the restore.
SCENARIOS.ack_outage = async (opts, ctx) => {
    const total = opts.messages;
    const {proxy, a} = await peerBehindCut(opts, ctx);
    a.cometd.registerExtension("ack", new AckExtension());
    const b = ctx.peer("B");
    const {handshake} = await a.connect();
    ctx.results.handshake_ext = handshake.ext || null;
    const ackField = handshake.ext && handshake.ext.ack;
    check(ackField === true || (ackField && ackField.enabled === true),
        "handshake reply does not enable acks (ext.ack)", handshake);
    await b.connect();
    const channel = "/interop/ack-outage";
    const received = [];
    expectSuccess((await a.subscribe(channel, (m) => received.push(m.data.n))).reply, "A subscribe");
    await a.connectHeld();

    // Warm-up: one delivery, acknowledged by the connect A holds afterwards.
    expectSuccess(await b.publish(channel, {n: 0}), "B publish 0");
    await a.waitUntil(() => received.length >= 1, "warm-up delivery");
    await a.connectHeld();
    const transportBefore = a.transportType();
    ctx.results.transport_before = transportBefore;
    const connectsBefore = a.connects.length;
    const failuresBefore = a.connectFailures.length;

    const cutAt = Date.now();
    proxy.cut(opts.cut);
    await a.waitUntil(() => a.connectFailures.length > failuresBefore, "A noticing the cut (failed /meta/connect)", 5000);
    ctx.results.noticed_cut_ms = Date.now() - cutAt;
    for (let n = 1; n <= total; ++n) {
        expectSuccess(await b.publish(channel, {n}), "B publish " + n + " during the outage");
    }
    ctx.results.published_during_outage_ms = Date.now() - cutAt;
    const rest = opts.outage - (Date.now() - cutAt);
    if (rest > 0) {
        await sleep(rest);
    }
    ctx.results.received_during_outage = received.slice(1);
    await proxy.restore();
    const restoredAt = Date.now();
    ctx.results.outage_ms = restoredAt - cutAt;
    let waitError = null;
    try {
        await a.waitUntil(() => received.length >= total + 1, "all " + total + " deliveries after restoring the connection");
        ctx.results.recovery_ms = Date.now() - restoredAt;
        // A sentinel published after the restore: arriving after all of them.
        expectSuccess(await b.publish(channel, {n: total + 1}), "B publish sentinel");
        await a.waitUntil(() => received.includes(total + 1), "sentinel delivery");
        await sleep(300);
    } catch (x) {
        waitError = x;
    }
    ctx.results.received = received.slice();
    ctx.results.handshakes = a.handshakes.map((m) => ({successful: m.successful, clientId: m.clientId}));
    ctx.results.transport_after = a.transportType();
    ctx.results.connect_failures = a.connectFailures.slice(failuresBefore).map((m) => m.failure && m.failure.reason || m.error || null);
    ctx.results.connects_after_cut = a.connects.slice(connectsBefore).map((m) => ({
        id: m.id, successful: m.successful, ack: m.ext ? m.ext.ack : undefined, error: m.error,
    }));
    ctx.results.connect_request_acks = a.sentConnects.map((m) => m.ext ? m.ext.ack : undefined);
    // Per received value: how often.
    const counts = {};
    for (const n of received) {
        counts[n] = (counts[n] || 0) + 1;
    }
    const expected = Array.from({length: total + 2}, (_, i) => i);
    ctx.results.missing = expected.filter((n) => !counts[n]);
    ctx.results.duplicated = Object.keys(counts).filter((n) => counts[n] > 1).map(Number);
    check(a.handshakes.filter((m) => m.successful).length === 1, "A re-handshook: its session did not survive the outage",
        ctx.results.handshakes);
    if (waitError) {
        throw waitError;
    }
    check(deepEqual(received, expected), "deliveries missing, duplicated or out of order",
        {missing: ctx.results.missing, duplicated: ctx.results.duplicated, received});
    check(ctx.results.transport_after === transportBefore, "A changed transport across the outage",
        {before: transportBefore, after: ctx.results.transport_after});
};

// Recovery after a lost session (server --history-channels /h/**, a short
// --max-interval): A registers the RecoveryExtension and subscribes to
// `subscription` in its /meta/handshake listener (the usual CometD pattern: a
// handshake drops every subscription), through a CuttableProxy; B publishes
// {n: 1..3} to each of `channels`, then the proxy is cut (--cut) while B
// publishes --messages N more to each, for --outage ms, long enough for the
// server to expire A's session. Once restored, A's connect is refused, A
// handshakes again, resubscribes, and the extension sends the last position
// it saw on each channel. expect "recovered": A gets 1..N+3 then a sentinel
// on each channel, each once, in order, and the reply says recovered: true,
// missed N; expect "expired" (a --history-size below N): onRecoveryFailed
// with reason expired, and nothing replayed: 1..3, then the sentinel.
async function recoveryAfterSessionLoss(opts, ctx, {expect, subscription = "/h/room", channels = [subscription]}) {
    const total = opts.messages;
    const {proxy, a} = await peerBehindCut(opts, ctx);
    const failed = [];
    const recovery = new RecoveryExtension({onRecoveryFailed: (ch, answer) => failed.push({channel: ch, answer: copy(answer)})});
    a.cometd.registerExtension("recovery", recovery);
    const received = Object.fromEntries(channels.map((c) => [c, []]));
    const count = () => Math.min(...channels.map((c) => received[c].length));
    const subscribeReplies = [];
    a.cometd.addListener("/meta/handshake", (m) => {
        if (m.successful) {
            a.cometd.subscribe(subscription, (msg) => received[msg.channel].push(msg.data.n), (reply) => {
                subscribeReplies.push(copy(reply));
                a.wake();
            });
        }
    });
    const b = ctx.peer("B");
    const publish = async (n, what) => {
        for (const channel of channels) {
            expectSuccess(await b.publish(channel, {n}), "B publish " + n + " to " + channel + what);
        }
    };
    await a.connect();
    await b.connect();
    await a.waitUntil(() => subscribeReplies.length >= 1, "first /meta/subscribe reply");
    expectSuccess(subscribeReplies[0], "subscribe " + subscription);
    await a.connectHeld();
    for (let n = 1; n <= 3; ++n) {
        await publish(n, "");
    }
    await a.waitUntil(() => count() >= 3, "deliveries 1..3");
    await a.connectHeld();
    const before = ctx.results.position_before = recovery.positions();
    const clientIdBefore = a.cometd.getClientId();

    const cutAt = Date.now();
    proxy.cut(opts.cut);
    for (let n = 4; n <= total + 3; ++n) {
        await publish(n, " while A is away");
    }
    await sleep(Math.max(0, opts.outage - (Date.now() - cutAt)));
    ctx.results.received_while_away = channels.flatMap((c) => received[c].slice(3));
    await proxy.restore();
    await a.waitUntil(() => subscribeReplies.length >= 2, "the /meta/subscribe reply after the re-handshake");
    const reply = subscribeReplies[1];
    ctx.results.resubscribe_reply = reply;
    ctx.results.resubscribe_request = a.sentSubscribes[a.sentSubscribes.length - 1];
    ctx.results.handshakes = a.handshakes.map((m) => ({successful: m.successful, clientId: m.clientId || null}));
    expectSuccess(reply, "resubscribe " + subscription);
    check(a.cometd.getClientId() !== clientIdBefore, "A kept its session: the outage was too short to lose it",
        ctx.results.handshakes);
    const sentRecover = ctx.results.resubscribe_request.ext && ctx.results.resubscribe_request.ext.recover;
    check(deepEqual(sentRecover, before), "the resubscribe did not carry the last positions seen",
        {sent: ctx.results.resubscribe_request, seen: before});
    const answers = ctx.results.answers = (reply.ext && reply.ext.recover) || {};
    const last = expect === "recovered" ? total + 3 : 3;
    await a.waitUntil(() => count() >= last, "deliveries up to " + last);
    await publish(total + 4, " (the sentinel)");
    await a.waitUntil(() => channels.every((c) => received[c].includes(total + 4)), "sentinel deliveries");
    await sleep(300);
    ctx.results.received = received;
    ctx.results.failed = failed;
    const after = ctx.results.positions = recovery.positions();
    const sequence = (from, to) => Array.from({length: to - from + 1}, (_, i) => from + i);
    for (const channel of channels) {
        const answer = answers[channel];
        if (expect === "recovered") {
            check(answer && answer.recovered === true && answer.missed === total,
                channel + ": the resubscribe reply does not say recovered: true, missed " + total, answers);
            check(deepEqual(received[channel], sequence(1, total + 4)),
                channel + ": deliveries missing, duplicated or out of order", received);
        } else {
            check(answer && answer.recovered === false && answer.reason === expect,
                channel + ": the resubscribe reply does not say recovered: false, reason " + expect, answers);
            check(deepEqual(received[channel], [1, 2, 3, total + 4]),
                channel + ": messages replayed although recovery failed", received);
        }
        check(after[channel] && after[channel].epoch === before[channel].epoch
            && after[channel].offset === before[channel].offset + total + 1,
            channel + ": the extension's position is not the sentinel's", {before, after});
    }
    const reasons = failed.map((f) => f.channel + ":" + f.answer.reason).sort();
    const wanted = expect === "recovered" ? [] : channels.map((c) => c + ":" + expect).sort();
    check(deepEqual(reasons, wanted), "onRecoveryFailed calls are not " + JSON.stringify(wanted), failed);
}

SCENARIOS.recover = (opts, ctx) => recoveryAfterSessionLoss(opts, ctx, {expect: "recovered"});
SCENARIOS.recover_expired = (opts, ctx) => recoveryAfterSessionLoss(opts, ctx, {expect: "expired"});
// A wildcard subscription: the extension names each remembered channel it matches.
SCENARIOS.recover_wildcard = (opts, ctx) => recoveryAfterSessionLoss(opts, ctx,
    {expect: "recovered", subscription: "/h/*", channels: ["/h/room", "/h/other"]});

// Subscribe to --channel (default /interop/api), write --ready-file once
// subscribed, then collect what arrives for --duration ms: for tests whose
// publisher is not this client (the server's HTTP API, another node).
// --tokens '["t1","t2"]': the handshake carries ext.token, the first token
// first, the next one on each later handshake (a client refreshing an
// expired token when the server advises it to handshake again).
SCENARIOS.receive = async (opts, ctx) => {
    const a = ctx.peer("A");
    const tokens = opts.tokens ? JSON.parse(opts.tokens) : [];
    let handshakes = 0;
    if (tokens.length) {
        a.cometd.registerExtension("token", {
            outgoing(message) {
                if (message.channel === "/meta/handshake") {
                    message.ext = Object.assign(message.ext || {}, {token: tokens[Math.min(handshakes, tokens.length - 1)]});
                    handshakes += 1;
                }
                return message;
            },
        });
    }
    const received = [];
    const failures = [];
    a.cometd.addListener("/meta/unsuccessful", (m) => failures.push(copy(m)));
    // --recovery: the shipped RecoveryExtension, and what each subscribe
    // reply answered about recovery.
    const recoveryFailed = [];
    const subscribeAnswers = [];
    if (opts.recovery) {
        a.cometd.registerExtension("recovery", new RecoveryExtension({
            onRecoveryFailed: (channel, answer) => recoveryFailed.push({channel, answer: copy(answer)}),
        }));
        a.cometd.addListener("/meta/subscribe", (m) => subscribeAnswers.push(copy((m.ext && m.ext.recover) || null)));
    }
    const channel = opts.channel;
    let enough = null;
    const done = new Promise((resolve) => { enough = resolve; });
    const onMessage = (m) => {
        const position = m.ext && m.ext.position;
        received.push(position ? {channel: m.channel, data: m.data, offset: position.offset} : {channel: m.channel, data: m.data});
        if (opts.until && received.length >= opts.until) enough();
    };
    // Subscribed again after each re-handshake (CometD drops subscriptions then).
    a.cometd.addListener("/meta/handshake", (m) => {
        if (m.successful && a.handshakes.filter((h) => h.successful).length > 1) {
            a.cometd.subscribe(channel, onMessage);
        }
    });
    await a.connect();
    const {reply} = await a.subscribe(channel, onMessage);
    ctx.results.subscribe_reply = reply;
    expectSuccess(reply, "subscribe " + channel);
    if (opts.readyFile) {
        writeFileSync(opts.readyFile, a.cometd.getClientId());
    }
    // --until N: as soon as N messages arrived (--duration bounds the wait).
    await Promise.race([sleep(opts.duration), opts.until ? done : new Promise(() => {})]);
    if (opts.until) await sleep(300);  // (a duplicate would come right behind)
    ctx.results.received = received;
    ctx.results.recovery_failed = recoveryFailed;
    ctx.results.subscribe_answers = subscribeAnswers;
    ctx.results.client_ids = a.handshakes.filter((h) => h.successful).map((h) => h.clientId);
    ctx.results.client_id = a.cometd.getClientId();
    ctx.results.handshakes = a.handshakes.map((m) => ({successful: m.successful, error: m.error || null}));
    ctx.results.failures = failures.map((m) => ({channel: m.channel, error: m.error || null, advice: m.advice || null}));
};

// ---------------------------------------------------------------- main

runDriver({
    script: "cometd_client.mjs",
    scenarios: SCENARIOS,
    transports: TRANSPORTS,
    options: {
        "messages": {int: true, metavar: "N", default: 20},
        "outage": {int: true, metavar: "MS", default: 2000},
        "cut": {metavar: "MODE", default: "blackhole", choices: CUT_MODES, what: "cut mode"},
        "channel": {metavar: "CHANNEL", default: "/interop/api"},
        "ready-file": {metavar: "PATH", default: null},
        "tokens": {metavar: "JSON", default: null},
        "cookie": {metavar: "NAME=VALUE", default: null},
        "recovery": {flag: true, default: false},
        "until": {int: true, metavar: "N", default: 0},
    },
    setup: installNodeAdapter,
    newPeer: (label, opts, options) => new Peer(label, opts, options),
});

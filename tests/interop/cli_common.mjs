// What the interop drivers (cometd_client.mjs, faye_client.mjs) share: the
// command line, the wire log, checks and waits, the base of their recording
// Peer classes, and the main() that runs one scenario and prints its ONE JSON
// line on stdout.
//
// A driver defines its SCENARIOS (name -> async (opts, ctx)) and a Peer class
// (a RecordingPeer with a startHandshake() and its client's own subscribe /
// publish / disconnect), then calls runDriver().
//
// Exit status: 0 scenario passed, 1 a check failed, 2 timed out, 3 bad usage.

import {parseArgs} from "node:util";

// ---------------------------------------------------------------- wire log

export const START = Date.now();
// Every HTTP request/response, JSONP request/script and WebSocket frame the
// clients saw, in order; printed in the JSON line unless --no-wire.
export const wire = [];
let wireEnabled = true;

export function parseMaybeJSON(text) {
    if (typeof text !== "string") {
        return text;
    }
    try {
        return JSON.parse(text);
    } catch (x) {
        return text;
    }
}

export function record(entry) {
    if (!wireEnabled) {
        return;
    }
    entry.t = Date.now() - START;
    wire.push(entry);
}

// Record the events of a WebSocket (open, each received frame, close, error)
// with `fields` (kind, conn, client...) in each entry.
export function recordSocketEvents(socket, fields) {
    socket.addEventListener("open", () => record({...fields, dir: "open"}));
    socket.addEventListener("message", (e) => record({...fields, dir: "recv", body: parseMaybeJSON(String(e.data))}));
    socket.addEventListener("close", (e) => record({...fields, dir: "close", code: e.code, reason: e.reason}));
    socket.addEventListener("error", (e) => record({
        ...fields, dir: "error", error: String(e && (e.message || e.error || e.data) || e),
    }));
}

// ---------------------------------------------------------------- command line

// Options of every driver. A spec: int (a whole number), choices, what (its
// name in "unknown ..." messages), metavar (in the usage line), default.
const COMMON_OPTIONS = {
    "transport": {metavar: "T", default: null, what: "transport"},
    "timeout": {int: true, metavar: "MS", default: 20000},
    "step-timeout": {int: true, metavar: "MS", default: 8000},
    "duration": {int: true, metavar: "MS", default: 4000},
    "log-level": {metavar: "L", default: "warn"},
    "no-wire": {flag: true},
};

function camelCase(name) {
    return name.replace(/-([a-z])/g, (_, c) => c.toUpperCase());
}

// The command line `URL SCENARIO [--option value]...` as opts: url, scenario,
// transport, timeout, stepTimeout, duration, logLevel, wire, plus one key
// (camelCase) for each of the driver's `options` (which may also override the
// common ones, e.g. a default). Bad usage prints the usage and exits 3.
export function parseCommandLine({script, scenarios, transports, transportNote = "", options = {}, argv = process.argv.slice(2)}) {
    const specs = {};
    for (const [name, spec] of Object.entries({...COMMON_OPTIONS, ...options})) {
        specs[name] = {...COMMON_OPTIONS[name], ...spec};
    }
    specs.transport.choices = transports;
    const usage = (message) => {
        const optionList = Object.entries(specs)
            .map(([name, spec]) => "[--" + name + (spec.flag ? "" : " " + spec.metavar) + "]").join(" ");
        process.stderr.write((message ? message + "\n" : "") +
            "usage: node " + script + " URL SCENARIO " + optionList + "\n" +
            "scenarios: " + Object.keys(scenarios).join(", ") + "\n" +
            "transports: " + transports.join(", ") + transportNote + "\n");
        process.exit(3);
    };
    let parsed;
    try {
        parsed = parseArgs({
            args: argv,
            allowPositionals: true,
            strict: true,
            options: {
                ...Object.fromEntries(Object.entries(specs).map(([name, spec]) => [name, {type: spec.flag ? "boolean" : "string"}])),
                help: {type: "boolean", short: "h"},
            },
        });
    } catch (x) {
        usage(x.message);
    }
    const {values, positionals} = parsed;
    if (values.help) {
        usage();
    }
    if (positionals.length !== 2) {
        usage("expected URL and SCENARIO");
    }
    const opts = {url: positionals[0], scenario: positionals[1]};
    for (const [name, spec] of Object.entries(specs)) {
        const given = values[name];
        if (spec.flag) {
            // --no-X sets X to false; --X sets X to true.
            const negated = name.startsWith("no-");
            opts[camelCase(negated ? name.slice(3) : name)] = negated ? !given : Boolean(given);
            continue;
        }
        let value = given === undefined ? spec.default : given;
        if (spec.int && given !== undefined) {
            value = Number(given);
            if (!Number.isInteger(value) || value < 0) {
                usage("--" + name + " takes a whole number, not " + given);
            }
        }
        if (value !== null && spec.choices && !spec.choices.includes(value)) {
            usage("unknown " + (spec.what || name) + " " + value);
        }
        opts[camelCase(name)] = value;
    }
    if (!Object.hasOwn(scenarios, opts.scenario)) {
        usage("unknown scenario " + opts.scenario);
    }
    return opts;
}

// ---------------------------------------------------------------- checks and waits

export class CheckFailed extends Error {
}

export class StepTimeout extends Error {
}

export function check(condition, message, detail) {
    if (!condition) {
        const text = detail === undefined ? message : message + ": " + JSON.stringify(detail);
        throw new CheckFailed(text);
    }
}

export function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

export function withTimeout(promise, ms, what) {
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

export function deepEqual(a, b) {
    return JSON.stringify(canonical(a)) === JSON.stringify(canonical(b));
}

export function copy(message) {
    return message === undefined ? undefined : JSON.parse(JSON.stringify(message));
}

export function expectSuccess(reply, what) {
    check(reply && reply.successful === true, what + " not successful", reply);
    return reply;
}

// A delivery as the server must push it: channel and data, none of the reply
// fields.
export function checkDelivery(message, channel, data, what) {
    check(message, what + ": nothing delivered");
    check(message.channel === channel, what + ": wrong channel", message);
    check(deepEqual(message.data, data), what + ": data differs", {expected: data, got: message.data});
    check(!("clientId" in message), what + ": delivery carries clientId", message);
    check(!("id" in message), what + ": delivery carries id", message);
    check(!("successful" in message), what + ": delivery carries successful", message);
}

// ---------------------------------------------------------------- peers

// One client's recorders and waits. A subclass feeds every received message
// (a copy) to noteIncoming(), counts the /meta/connect it sends in
// connectsSent, fills `handshakes` and calls wake() on anything a wait may
// be looking for; it provides startHandshake().
export class RecordingPeer {
    constructor(label, opts) {
        this.label = label;
        this.opts = opts;
        this.events = [];         // every non-meta message pushed by the server (raw, before client-side matching)
        this.metaReplies = [];    // every /meta/* message received
        this.replies = [];        // non-meta replies (publish replies)
        this.handshakes = [];
        this.connects = [];       // /meta/connect replies
        this.connectsSent = 0;
        this.waiters = [];
    }

    noteIncoming(m) {
        const isMeta = typeof m.channel === "string" && m.channel.startsWith("/meta/");
        // A reply has `successful` and no `data`; anything else that is not
        // meta is an event (delivery) pushed by the server.
        const isReply = ("successful" in m) && !("data" in m);
        if (isMeta) {
            this.metaReplies.push(m);
            if (m.channel === "/meta/connect") {
                this.connects.push(m);
            }
        } else if (isReply) {
            this.replies.push(m);
        } else {
            this.events.push(m);
        }
    }

    wake() {
        const run = () => {
            for (const w of this.waiters.slice()) {
                w();
            }
        };
        run();
        // Callbacks and listeners run after the incoming extensions: look again
        // once they have.
        setTimeout(run, 0);
    }

    // Resolve when predicate() returns a truthy value (re-checked on every message).
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

    // Handshake, then wait for the first successful /meta/connect reply.
    async connect() {
        this.startHandshake();
        const hs = await this.waitUntil(() => this.handshakes.find((m) => m.successful), "successful /meta/handshake reply");
        const first = await this.waitUntil(() => this.connects.find((m) => m.successful === true),
            "first successful /meta/connect reply");
        return {handshake: hs, connect: first};
    }

    // Wait until a /meta/connect is outstanding after at least one connect
    // reply (i.e. the server is presumably holding it), plus a little slack.
    async connectHeld() {
        await this.waitUntil(() => this.connects.length >= 1 && this.connectsSent > this.connects.length,
            "an outstanding (held) /meta/connect");
        await sleep(150);
    }

    eventsOn(channel) {
        return this.events.filter((m) => m.channel === channel);
    }
}

// ---------------------------------------------------------------- shared scenarios

// Scenario steps both drivers run the same way on a connected peer. A Peer's
// subscribe(channel, listener) calls listener(message) with at least
// {channel, data}; subscribe() resolves to {sub, reply}, unsubscribe(sub) to
// the /meta/unsubscribe reply. Options: holdConnect, wait for a held
// /meta/connect before publishing (deliveries then travel with it, not with
// a publish reply); settleMs, how long to wait for anything extra (duplicates)
// after the last expected delivery.

// The handshake and first /meta/connect replies (from peer.connect()).
export function handshakeSteps(ctx, peer, {handshake, connect}) {
    ctx.results.handshake_reply = handshake;
    ctx.results.first_connect_reply = connect;
    ctx.results.cookies = peer.cookies();
    ctx.results.handshake_attempts = peer.handshakes.length;
    check(typeof handshake.clientId === "string" && handshake.clientId.length > 0, "no clientId in handshake reply", handshake);
    check(Array.isArray(handshake.supportedConnectionTypes), "no supportedConnectionTypes in handshake reply", handshake);
    check(handshake.supportedConnectionTypes.includes(peer.transportType()),
        "transport in use is not listed by the server", {using: peer.transportType(), server: handshake.supportedConnectionTypes});
}

// Subscribe to /interop/exact and publish to it: one delivery, as published.
export async function subscribePublishScenario(ctx, peer, {holdConnect = false, settleMs = 200} = {}) {
    const channel = "/interop/exact";
    const received = [];
    const {reply: subReply} = await peer.subscribe(channel, (m) => received.push(copy(m)));
    ctx.results.subscribe_reply = subReply;
    expectSuccess(subReply, "subscribe " + channel);
    check(subReply.subscription === channel, "subscribe reply does not echo subscription", subReply);
    if (holdConnect) {
        await peer.connectHeld();
    }

    const data = {text: "hello", n: 1, nested: {list: [1, 2.5, "x", null, true]}, unicode: "h\u00e9llo \u2603"};
    const pubReply = await peer.publish(channel, data);
    ctx.results.publish_reply = pubReply;
    expectSuccess(pubReply, "publish");
    check(!("data" in pubReply), "publish reply carries data", pubReply);
    await peer.waitUntil(() => received.length >= 1, "own publish delivered to the listener");
    await sleep(settleMs);
    ctx.results.received = received;
    ctx.results.raw_events = peer.events;
    checkDelivery(peer.eventsOn(channel)[0], channel, data, "delivery");
    check(peer.eventsOn(channel).length === 1, "publish delivered more than once (raw)", peer.eventsOn(channel));
    check(received.length === 1, "listener called more than once", received);
}

// Wildcard subscriptions (/chat/*, /news/**): of nine publishes exactly the
// matching ones are delivered, raw (what the server pushed) and to the
// listeners, each once, as a delivery.
export async function wildcardScenario(ctx, peer, {holdConnect = false, settleMs = 200} = {}) {
    const got = {"/chat/*": [], "/news/**": [], "/interop/sentinel": []};
    for (const pattern of Object.keys(got)) {
        const {reply} = await peer.subscribe(pattern, (m) => got[pattern].push(m.channel));
        expectSuccess(reply, "subscribe " + pattern);
        check(reply.subscription === pattern, "subscribe reply does not echo subscription", reply);
    }
    if (holdConnect) {
        await peer.connectHeld();
    }
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
    const expected = {
        "/chat/*": ["/chat/room"],
        "/news/**": ["/news/a", "/news/a/b/c"],
    };
    const replies = {};
    for (const channel of publishes) {
        const reply = await peer.publish(channel, {channel: channel});
        replies[channel] = reply;
        expectSuccess(reply, "publish to " + channel);
    }
    // A sentinel published last: events of one session arrive in order, so once
    // it is here every earlier matching publish must have arrived too.
    expectSuccess(await peer.publish("/interop/sentinel", {last: true}), "publish to sentinel");
    await peer.waitUntil(() => got["/interop/sentinel"].length >= 1, "sentinel delivery");
    await sleep(settleMs);
    const rawChannels = peer.events.map((m) => m.channel);
    ctx.results.listener_channels = got;
    ctx.results.raw_event_channels = rawChannels;
    ctx.results.publish_replies = replies;
    for (const pattern of Object.keys(expected)) {
        check(deepEqual(got[pattern], expected[pattern]), pattern + " listener got wrong channels", got[pattern]);
    }
    const expectedRaw = ["/chat/room", "/news/a", "/news/a/b/c", "/interop/sentinel"];
    check(deepEqual(rawChannels, expectedRaw),
        "server delivered the wrong set of channels (raw, before client-side matching)", {expected: expectedRaw, got: rawChannels});
    for (const m of peer.events) {
        checkDelivery(m, m.channel, m.channel === "/interop/sentinel" ? {last: true} : {channel: m.channel}, "delivery on " + m.channel);
    }
}

// After an unsubscribe the server delivers nothing more on the channel; a
// sentinel subscription still works.
export async function unsubscribeScenario(ctx, peer, {holdConnect = false, settleMs = 300} = {}) {
    const channel = "/interop/unsub";
    const sentinel = "/interop/unsub-sentinel";
    const received = [];
    const sentinels = [];
    const {sub, reply: subReply} = await peer.subscribe(channel, (m) => received.push(m.data));
    expectSuccess(subReply, "subscribe");
    expectSuccess((await peer.subscribe(sentinel, (m) => sentinels.push(m.data))).reply, "subscribe sentinel");
    if (holdConnect) {
        await peer.connectHeld();
    }

    expectSuccess(await peer.publish(channel, {n: 1}), "publish before unsubscribe");
    await peer.waitUntil(() => received.length >= 1, "delivery before unsubscribe");

    const unsubReply = await peer.unsubscribe(sub);
    ctx.results.unsubscribe_reply = unsubReply;
    expectSuccess(unsubReply, "unsubscribe");
    check(unsubReply.subscription === channel, "unsubscribe reply does not echo subscription", unsubReply);

    const pub2 = await peer.publish(channel, {n: 2});
    ctx.results.publish_after_unsubscribe_reply = pub2;
    expectSuccess(pub2, "publish after unsubscribe");
    expectSuccess(await peer.publish(sentinel, {n: 3}), "publish sentinel");
    await peer.waitUntil(() => sentinels.length >= 1, "sentinel delivery");
    await sleep(settleMs);
    ctx.results.raw_events = peer.events;
    ctx.results.received = received;
    check(received.length === 1, "listener called after unsubscribe", received);
    check(deepEqual(peer.eventsOn(channel).map((m) => m.data), [{n: 1}]),
        "server still delivered to the unsubscribed session (raw)", peer.eventsOn(channel));
    check(sentinels.length === 1, "sentinel delivered more than once", sentinels);
}

// Once a /meta/connect is held, disconnect: the transport used, the reply (and
// how long it took) and the held connect the server releases (null if none
// came back within 3 s).
export async function disconnectSteps(ctx, peer) {
    await peer.connectHeld();
    ctx.results.transport_before = peer.transportType();
    const connectsBefore = peer.connects.length;
    const t0 = Date.now();
    const reply = await peer.disconnect();
    ctx.results.disconnect_ms = Date.now() - t0;
    ctx.results.disconnect_reply = reply;
    expectSuccess(reply, "disconnect");
    // The held connect should come back (reconnect: none) promptly.
    try {
        await peer.waitUntil(() => peer.connects.length > connectsBefore, "held /meta/connect returning after disconnect", 3000);
        ctx.results.held_connect_reply = peer.connects[peer.connects.length - 1];
    } catch (x) {
        ctx.results.held_connect_reply = null;
    }
}

// Stay subscribed and idle for --duration ms: held /meta/connect replies all
// successful, no new handshake; afterIdle() then adds the driver's own
// results and checks; a publish at the end is delivered once.
export async function idleSteps(ctx, peer, {settleMs = 300, afterIdle = () => {}} = {}) {
    const channel = "/interop/idle";
    const received = [];
    expectSuccess((await peer.subscribe(channel, (m) => received.push(m.data))).reply, "subscribe");
    const t0 = Date.now();
    await sleep(peer.opts.duration);
    ctx.results.connect_replies = peer.connects;
    ctx.results.connects_sent = peer.connectsSent;
    ctx.results.handshakes = peer.handshakes.length;
    afterIdle();
    check(peer.handshakes.length === 1, "client re-handshook while idle", peer.handshakes);
    check(peer.connects.every((m) => m.successful === true), "unsuccessful /meta/connect reply", peer.connects);
    expectSuccess(await peer.publish(channel, {after: Date.now() - t0}), "publish after idle");
    await peer.waitUntil(() => received.length >= 1, "delivery after idling");
    await sleep(settleMs);
    ctx.results.received = received;
    check(received.length === 1, "delivery duplicated", received);
}

// A scenario for one connected peer "A": steps(ctx, peer, options), then
// after(ctx, peer) (e.g. checks every scenario of a driver makes).
export function onePeerScenario(steps, options = {}, after = () => {}) {
    return async (opts, ctx) => {
        const peer = ctx.peer("A");
        await peer.connect();
        await steps(ctx, peer, options);
        after(ctx, peer);
    };
}

// ---------------------------------------------------------------- main

let emitted = false;

function emit(output, code) {
    if (emitted) {
        return;
    }
    emitted = true;
    process.stdout.write(JSON.stringify(output) + "\n", () => process.exit(code));
}

// Parse the command line (see parseCommandLine for `command`), call setup(opts),
// run the scenario with ctx = {results, cleanup: [functions], peer(label,
// options) -> newPeer(label, opts, options)}, print the JSON line and exit.
// `output` adds fields to the JSON line; finish(output, peers) more at the end.
export function runDriver({setup = () => {}, newPeer, output: extraOutput = {}, finish: extraFinish = () => {}, ...command}) {
    const main = async () => {
        const opts = parseCommandLine(command);
        wireEnabled = opts.wire;
        setup(opts);

        const peers = [];
        const ctx = {
            results: {},
            cleanup: [],
            peer(label, options) {
                const p = newPeer(label, opts, options);
                peers.push(p);
                return p;
            },
        };
        const output = {
            scenario: opts.scenario,
            ...extraOutput,
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
            extraFinish(output, peers);
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
            await command.scenarios[opts.scenario](opts, ctx);
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
        for (const fn of ctx.cleanup) {
            try {
                fn();
            } catch (x) {
                // ignore
            }
        }
        clearTimeout(overall);
        emit(output, exitCode);
    };
    main().catch((x) => {
        emit({ok: false, error: String(x && x.stack || x), error_type: "exception"}, 1);
    });
}

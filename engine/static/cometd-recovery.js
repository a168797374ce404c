// RecoveryExtension: channel history recovery for the CometD JavaScript client
// (npm `cometd`; tested with 9.0), against a bayeux-engine server started with
// `--history-channels` (or `server.history(...)`).
//
// The server puts `ext.position = {epoch, offset}` on every message of a
// history channel. This extension remembers the last position seen per
// channel and sends it back in `ext.recover` with each /meta/subscribe; the
// server then delivers the messages missed in between, in order, before any
// live one, and says in the reply's `ext.recover` whether it could
// (`recovered: true`) or not (`recovered: false` and a `reason`: the
// application must then resynchronise another way, e.g. reload its state).
//
//   import {CometD} from "cometd";
//   import {RecoveryExtension} from "/bayeux-engine/cometd-recovery.js";
//
//   const recovery = new RecoveryExtension({
//       onRecoveryFailed(channel, answer) { reloadState(channel, answer.reason); },
//   });
//   cometd.registerExtension("recovery", recovery);
//   // CometD forgets subscriptions on every handshake: subscribe in the
//   // handshake listener, so a re-handshake (session lost) resubscribes,
//   // and the extension recovers what was missed.
//   cometd.addListener("/meta/handshake", (m) => {
//       if (m.successful) cometd.subscribe("/chat/room", onMessage);
//   });
//   cometd.handshake();
//
// (`cometd.resubscribe(subscription)` in that listener works the same: it is
// a plain subscribe once the handshake has dropped the old one.)
// onRecoveryFailed runs while the reply is being received, before the
// subscribe callback and /meta/subscribe listeners see it.
//
// An unsubscribe does not forget a channel's position (a later subscribe
// would recover from it): call `forget(channel)` for that.
// Positions live in memory only; `positions()` gives a copy that can be saved
// (e.g. in sessionStorage) and handed back as `new RecoveryExtension({positions})`
// to recover across a page reload.
//
// No dependency, not even on `cometd`: CometD calls extensions by their
// method names (registered, unregistered, incoming, outgoing).

export class RecoveryExtension {
    #cometd = null;
    #positions = new Map();  // channel -> {epoch, offset}
    #onRecoveryFailed;

    // options.onRecoveryFailed(channel, answer): called when the server could
    //   not replay what was missed on `channel`; `answer` is the reply's entry,
    //   {epoch, offset, recovered: false, reason}, reason one of epoch_changed,
    //   expired, too_many, future_offset, invalid_position, no_history,
    //   not_subscribed (already_subscribed is no failure: the session's live
    //   messages never stopped, so it is not reported).
    // options.positions: {channel: {epoch, offset}} to start from (what
    //   positions() returned earlier).
    constructor({onRecoveryFailed = null, positions = null} = {}) {
        if (onRecoveryFailed !== null && typeof onRecoveryFailed !== "function") {
            throw new TypeError("RecoveryExtension: onRecoveryFailed must be a function");
        }
        this.#onRecoveryFailed = onRecoveryFailed;
        for (const [channel, position] of Object.entries(positions || {})) {
            if (!isPosition(position)) {
                throw new TypeError("RecoveryExtension: not a position for " + channel + ": " + JSON.stringify(position));
            }
            this.#positions.set(channel, {epoch: position.epoch, offset: position.offset});
        }
    }

    get cometd() {
        return this.#cometd;
    }

    registered(name, cometd) {
        this.#cometd = cometd;
    }

    unregistered() {
        // Positions are kept: the same instance may be registered again.
        this.#cometd = null;
    }

    // The last position seen per channel, as a plain object (a copy).
    positions() {
        const copy = {};
        for (const [channel, position] of this.#positions) {
            copy[channel] = {epoch: position.epoch, offset: position.offset};
        }
        return copy;
    }

    // Stop recovering `channel` (all channels when called without one): the
    // next subscribe starts from what is live then.
    forget(channel) {
        if (channel === undefined) {
            this.#positions.clear();
        } else {
            this.#positions.delete(channel);
        }
    }

    incoming(message) {
        const channel = message.channel;
        if (channel === "/meta/subscribe") {
            if (message.successful === true && message.ext && isObject(message.ext.recover)) {
                this.#answered(message.ext.recover);
            }
        } else if (typeof channel === "string" && !channel.startsWith("/meta/")) {
            const position = message.ext && message.ext.position;
            if (isPosition(position)) {
                this.#note(channel, position);
            }
        }
        return message;
    }

    outgoing(message) {
        if (message.channel !== "/meta/subscribe") {
            return message;
        }
        const recover = {};
        const subscriptions = [].concat(message.subscription);
        for (const [channel, position] of this.#positions) {
            if (subscriptions.some((s) => typeof s === "string" && channelMatches(s, channel))) {
                recover[channel] = {epoch: position.epoch, offset: position.offset};
            }
        }
        if (Object.keys(recover).length > 0) {
            const ext = message.ext || (message.ext = {});
            // Positions the application put there itself win.
            ext.recover = Object.assign(recover, isObject(ext.recover) ? ext.recover : {});
        }
        return message;
    }

    // Keep the newest position: a new epoch replaces the old one (the stream
    // was restarted: older offsets mean nothing in it), and within an epoch
    // only a greater offset counts (a message may be seen again, or after
    // the subscribe reply that already announced it).
    #note(channel, position) {
        const known = this.#positions.get(channel);
        if (known === undefined || known.epoch !== position.epoch || position.offset > known.offset) {
            this.#positions.set(channel, {epoch: position.epoch, offset: position.offset});
        }
    }

    #answered(recover) {
        for (const [channel, answer] of Object.entries(recover)) {
            if (!isObject(answer)) {
                continue;
            }
            // already_subscribed: this session's live messages on the channel
            // never stopped, so nothing was lost and the ones in flight still
            // move the position; recovered: true, likewise, the missed
            // messages are on their way. Taking the reply's (newer) position
            // then would skip them if the connection broke before they came.
            if (answer.recovered === true || answer.reason === "already_subscribed") {
                continue;
            }
            if (isPosition(answer)) {
                this.#note(channel, answer);
            }
            if (answer.recovered === false) {
                this.#failed(channel, answer);
            }
        }
    }

    #failed(channel, answer) {
        if (this.#onRecoveryFailed === null) {
            return;
        }
        try {
            this.#onRecoveryFailed(channel, answer);
        } catch (x) {
            // The reply must still reach the subscribe callback.
            const cometd = this.#cometd;
            if (cometd && typeof cometd._warn === "function") {
                cometd._warn("RecoveryExtension: onRecoveryFailed threw", x);
            }
        }
    }
}

// Bayeux channel matching: `/a/*` matches one more segment (`/a/b`),
// `/a/**` one or more (`/a/b`, `/a/b/c`); anything else only itself.
export function channelMatches(pattern, channel) {
    const slash = pattern.lastIndexOf("/");
    const last = pattern.substring(slash + 1);
    if (last !== "*" && last !== "**") {
        return pattern === channel;
    }
    const prefix = pattern.substring(0, slash + 1);
    if (!channel.startsWith(prefix) || channel.length === prefix.length) {
        return false;
    }
    return last === "**" || channel.indexOf("/", prefix.length) < 0;
}

function isObject(value) {
    return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isPosition(value) {
    return isObject(value) && typeof value.epoch === "string" && Number.isSafeInteger(value.offset) && value.offset >= 0;
}

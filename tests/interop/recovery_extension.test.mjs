// Unit tests of engine/static/cometd-recovery.js, without a server:
// `node --test tests/interop/recovery_extension.test.mjs`
// (run by test_recovery_extension_js.py).
import {test} from "node:test";
import assert from "node:assert/strict";
import {RecoveryExtension, channelMatches} from "../../engine/static/cometd-recovery.js";

const event = (channel, epoch, offset) => ({channel, data: {}, ext: {position: {epoch, offset}}});
const subscribe = (subscription, ext) => ({channel: "/meta/subscribe", subscription, ...(ext ? {ext} : {})});
const reply = (recover) => ({channel: "/meta/subscribe", successful: true, ext: {recover}});

test("Bayeux wildcards: * one segment, ** one or more", () => {
    assert.ok(channelMatches("/a/b", "/a/b"));
    assert.ok(!channelMatches("/a/b", "/a/bc"));
    assert.ok(channelMatches("/a/*", "/a/b"));
    assert.ok(!channelMatches("/a/*", "/a/b/c"));
    assert.ok(!channelMatches("/a/*", "/a"));
    assert.ok(!channelMatches("/a/*", "/ab/c"));
    assert.ok(channelMatches("/a/**", "/a/b"));
    assert.ok(channelMatches("/a/**", "/a/b/c"));
    assert.ok(!channelMatches("/a/**", "/a"));
    assert.ok(!channelMatches("/a/**", "/ab/c"));
    assert.ok(channelMatches("/**", "/x/y"));
});

test("the newest position per channel: greater offsets, or a new epoch", () => {
    const r = new RecoveryExtension();
    r.incoming(event("/c", "e1", 5));
    r.incoming(event("/c", "e1", 4));  // seen again, older
    r.incoming(event("/c", "e1", 5));
    assert.deepEqual(r.positions(), {"/c": {epoch: "e1", offset: 5}});
    r.incoming(event("/c", "e2", 1));  // the stream restarted
    assert.deepEqual(r.positions(), {"/c": {epoch: "e2", offset: 1}});
    r.incoming(event("/c", "e2", "7"));  // not a position
    r.incoming({channel: "/meta/connect", successful: true, ext: {position: {epoch: "x", offset: 9}}});
    r.incoming({channel: "/d", data: {}});
    assert.deepEqual(r.positions(), {"/c": {epoch: "e2", offset: 1}});
});

test("ext.recover on a subscribe: the concrete channel, or what a wildcard matches", () => {
    const r = new RecoveryExtension();
    for (const [channel, offset] of [["/chat/a", 1], ["/chat/b/c", 2], ["/news", 3]]) {
        r.incoming(event(channel, "e", offset));
    }
    assert.deepEqual(r.outgoing(subscribe("/news")).ext.recover, {"/news": {epoch: "e", offset: 3}});
    assert.deepEqual(r.outgoing(subscribe("/chat/*")).ext.recover, {"/chat/a": {epoch: "e", offset: 1}});
    assert.deepEqual(Object.keys(r.outgoing(subscribe("/chat/**")).ext.recover), ["/chat/a", "/chat/b/c"]);
    assert.deepEqual(Object.keys(r.outgoing(subscribe(["/news", "/chat/*"])).ext.recover), ["/chat/a", "/news"]);
    assert.equal(r.outgoing(subscribe("/other")).ext, undefined);
    assert.equal(r.outgoing({channel: "/meta/connect"}).ext, undefined);
    // What the application put there itself stays, next to other extensions' fields.
    const own = r.outgoing(subscribe("/news", {ack: 1, recover: {"/news": {epoch: "e", offset: 0}}}));
    assert.deepEqual(own.ext, {ack: 1, recover: {"/news": {epoch: "e", offset: 0}}});
    // The sent position is a copy.
    r.outgoing(subscribe("/news")).ext.recover["/news"].offset = 99;
    assert.equal(r.positions()["/news"].offset, 3);
});

test("subscribe replies: a fresh position is kept, a recovery's is left to its messages", () => {
    const failed = [];
    const r = new RecoveryExtension({onRecoveryFailed: (channel, answer) => failed.push([channel, answer.reason])});
    r.incoming(reply({"/fresh": {epoch: "e", offset: 10}}));
    r.incoming(event("/ok", "e", 2));
    r.incoming(reply({"/ok": {epoch: "e", offset: 9, recovered: true, missed: 7}}));
    r.incoming(event("/same", "e", 4));
    r.incoming(reply({"/same": {epoch: "e", offset: 8, recovered: false, reason: "already_subscribed"}}));
    r.incoming(event("/gone", "e", 1));
    r.incoming(reply({"/gone": {epoch: "f", offset: 3, recovered: false, reason: "epoch_changed"}}));
    r.incoming(reply({"/plain": {recovered: false, reason: "no_history"}}));
    r.incoming({channel: "/meta/subscribe", successful: false, ext: {recover: {"/x": {recovered: false, reason: "expired"}}}});
    assert.deepEqual(r.positions(), {
        "/fresh": {epoch: "e", offset: 10},
        "/ok": {epoch: "e", offset: 2},
        "/same": {epoch: "e", offset: 4},
        "/gone": {epoch: "f", offset: 3},
    });
    assert.deepEqual(failed, [["/gone", "epoch_changed"], ["/plain", "no_history"]]);
});

test("a throwing callback does not keep the reply from the application", () => {
    const warnings = [];
    const r = new RecoveryExtension({onRecoveryFailed: () => { throw new Error("app bug"); }});
    r.registered("recovery", {_warn: (...args) => warnings.push(args)});
    const message = reply({"/c": {epoch: "e", offset: 3, recovered: false, reason: "expired"}});
    assert.equal(r.incoming(message), message);
    assert.equal(warnings.length, 1);
    assert.deepEqual(r.positions(), {"/c": {epoch: "e", offset: 3}});
});

test("positions handed back, forget(), unregister keeps them", () => {
    const r = new RecoveryExtension({positions: {"/a": {epoch: "e", offset: 1}, "/b": {epoch: "e", offset: 2}}});
    r.registered("recovery", {});
    r.unregistered();
    assert.equal(r.cometd, null);
    r.forget("/a");
    assert.deepEqual(r.positions(), {"/b": {epoch: "e", offset: 2}});
    r.forget();
    assert.deepEqual(r.positions(), {});
    assert.throws(() => new RecoveryExtension({positions: {"/a": {epoch: "e", offset: -1}}}), /not a position for \/a/);
    assert.throws(() => new RecoveryExtension({onRecoveryFailed: "no"}), /must be a function/);
});

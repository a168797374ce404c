// jsforce's Streaming API client (Faye underneath) against the engine, as a
// Salesforce org: `new jsforce.Connection({instanceUrl, accessToken, version})`,
// `conn.streaming.createClient([new StreamingExtension.Replay(channel, replayId)])`,
// then subscribe to CHANNEL.  jsforce sends `Authorization: OAuth <token>` and
// speaks to <instanceUrl>/cometd/<version>.
//
//   node jsforce_client.mjs INSTANCE_URL TOKEN CHANNEL [--replay=ID] [--count N]
//        [--version V] [--timeout MS]
//
// Prints JSON lines on stdout: {"subscribed": true} once the subscribe
// succeeded (the test publishes the live events then), {"event": data} for
// each event as it comes, then ONE result line:
// {"ok", "received": [event data...], "error": {code, message, text} | null,
//  "wire": [every Bayeux message sent and received]}.
// It ends after N events (ok: true), a failed subscribe (ok: false, error),
// or the timeout (ok: false).  Exit 0 when ok.

import {parseArgs} from "node:util";
import {createRequire} from "node:module";

const require = createRequire(import.meta.url);
const jsforce = require("jsforce");
const {StreamingExtension} = require("jsforce/api/streaming");

const {values, positionals} = parseArgs({
    allowPositionals: true,
    options: {
        replay: {type: "string"},
        count: {type: "string", default: "1"},
        version: {type: "string", default: "45.0"},
        timeout: {type: "string", default: "15000"},
    },
});
if (positionals.length !== 3) {
    console.error("usage: jsforce_client.mjs INSTANCE_URL TOKEN CHANNEL [--replay=ID] [--count N]");
    process.exit(3);
}
const [instanceUrl, accessToken, channel] = positionals;
const count = parseInt(values.count, 10);

const wire = [];
const received = [];
let done = false;
const wireLog = {
    incoming(message, callback) {
        wire.push({dir: "recv", message});
        callback(message);
    },
    outgoing(message, callback) {
        wire.push({dir: "send", message: JSON.parse(JSON.stringify(message))});
        callback(message);
    },
};

const conn = new jsforce.Connection({instanceUrl, accessToken, version: values.version});
// jsforce's own detector of a refused handshake (advice reconnect: none).
const extensions = [new StreamingExtension.AuthFailure((message) => finish(false, {
    text: "auth failure", message: message.error,
}))];
if (values.replay !== undefined) {
    extensions.push(new StreamingExtension.Replay(channel, parseInt(values.replay, 10)));
}
const client = conn.streaming.createClient(extensions);
// Added after the Replay extension: the log shows what it wrote.
client.addExtension(wireLog);


function finish(ok, error) {
    if (done) {
        return;
    }
    done = true;
    console.log(JSON.stringify({ok, received, error: error || null, wire}));
    try {
        client.disconnect();
    } catch (x) {
        // (exiting anyway)
    }
    setTimeout(() => process.exit(ok ? 0 : 1), 200);
}

setTimeout(() => finish(false, {text: `timeout: ${received.length} of ${count} events`}),
    parseInt(values.timeout, 10));

const subscription = client.subscribe(channel, (data) => {
    received.push(data);
    console.log(JSON.stringify({event: data}));
    if (received.length >= count) {
        finish(true);
    }
});
subscription.then(
    () => console.log(JSON.stringify({subscribed: true})),
    (err) => finish(false, {code: err && err.code, message: err && err.message, text: String(err)}),
);

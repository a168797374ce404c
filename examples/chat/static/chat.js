// The chat page: the CometD 9 JavaScript client (npm `cometd`, served by the
// engine at /chat/vendor/cometd/) against the engine's Bayeux endpoint /cometd.
//
//   /chat/                             WebSocket if it works, else long-polling
//   /chat/?transport=long-polling      long-polling only (websocket unregistered)
//
// Everything a user typed is rendered with textContent, never as HTML.
//
// The room keeps a history: the engine's RecoveryExtension (served at
// /bayeux-engine/cometd-recovery.js) brings back what was missed while the
// session was lost, when the handshake listener below subscribes again.

import {CometD} from "./vendor/cometd/cometd.js";
import {RecoveryExtension} from "/bayeux-engine/cometd-recovery.js";

const ROOM = "/chat/room";
const $ = (id) => document.getElementById(id);

const params = new URLSearchParams(location.search);
const cometd = new CometD();

const wanted = params.get("transport");
if (wanted === "long-polling") {
    cometd.unregisterTransport("websocket");
} else if (wanted && wanted !== "websocket") {
    // Any other registered type, alone (e.g. ?transport=callback-polling).
    for (const type of cometd.getTransportTypes()) {
        if (type !== wanted) {
            cometd.unregisterTransport(type);
        }
    }
}

cometd.configure({
    url: `${location.protocol}//${location.host}/cometd`,
    logLevel: params.has("debug") ? "debug" : "warn",
});

let me = null;              // our name once joined
let roomSubscription = null;

cometd.registerExtension("recovery", new RecoveryExtension({
    // The missed messages are gone (too many, too old, server restarted):
    // say so; a real application would reload its state here.
    onRecoveryFailed(channel, answer) {
        renderNotice(`some messages were missed (${answer.reason})`);
    },
}));

// ------------------------------------------------------------------ display

function setState(state, text) {
    const el = $("state");
    el.dataset.state = state;
    el.textContent = text;
}

function showTransport() {
    const transport = cometd.getTransport();
    $("transport").textContent = transport ? transport.type : "–";
}

function showError(text) {
    $("error").textContent = text || "";
}

function timeOf(ms) {
    const date = typeof ms === "number" ? new Date(ms) : new Date();
    return date.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit"});
}

function append(item) {
    const log = $("log");
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(item);
    if (atBottom) {
        log.scrollTop = log.scrollHeight;
    }
}

function renderMessage(data) {
    const item = document.createElement("li");
    item.className = "message";
    const time = document.createElement("time");
    time.textContent = timeOf(data.ts);
    const user = document.createElement("span");
    user.className = "user";
    user.textContent = String(data.user);
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = String(data.text);
    item.append(time, user, text);
    append(item);
}

function renderNotice(text) {
    const item = document.createElement("li");
    item.className = "notice";
    item.textContent = text;
    append(item);
}

function renderMembers(members) {
    if (!Array.isArray(members)) {
        return;
    }
    $("members").replaceChildren(...members.map((name) => {
        const item = document.createElement("li");
        item.textContent = String(name);
        return item;
    }));
}

function onRoom(message) {
    const data = message.data || {};
    switch (data.kind) {
        case "message":
            renderMessage(data);
            break;
        case "join":
            renderNotice(`${data.user} joined`);
            renderMembers(data.members);
            break;
        case "leave":
            renderNotice(`${data.user} left${data.reason === "timeout" ? " (timed out)" : ""}`);
            renderMembers(data.members);
            break;
    }
}

// --------------------------------------------------------------- the room

function join(name) {
    cometd.remoteCall("chat/join", {name}, 5000, (reply) => {
        if (!reply.successful) {
            showError(`could not join: ${reply.error || "no answer"}`);
            return;
        }
        showError("");
        me = reply.data.name;
        renderMembers(reply.data.members);
        $("join-form").hidden = true;
        const meLine = $("me");
        meLine.textContent = `You are ${me}.`;
        meLine.hidden = false;
        $("text").disabled = false;
        $("send").disabled = false;
        $("text").focus();
    });
}

$("join-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const name = $("name").value.trim();
    if (name) {
        join(name);
    }
});

$("say-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("text");
    const text = input.value.trim();
    if (!text || me === null) {
        return;
    }
    input.value = "";
    cometd.publish("/service/chat/say", {text}, (reply) => {
        showError(reply.successful ? "" : `not sent: ${reply.error || "no answer"}`);
    });
});

// ---------------------------------------------------------- the connection

cometd.addListener("/meta/handshake", (message) => {
    showTransport();
    if (!message.successful) {
        setState("down", "cannot reach the server, retrying…");
        return;
    }
    setState("connected", "connected");
    $("join").disabled = false;
    // A new session each handshake (also after an expiry): subscribe again,
    // and join again under the same name if we had joined.
    cometd.batch(() => {
        roomSubscription = roomSubscription
            ? cometd.resubscribe(roomSubscription)
            : cometd.subscribe(ROOM, onRoom);
        if (me !== null) {
            join(me);
        }
    });
});

cometd.addListener("/meta/connect", (message) => {
    if (cometd.isDisconnected()) {
        setState("down", "disconnected");
        return;
    }
    showTransport();
    if (message.successful) {
        setState("connected", "connected");
    } else {
        setState("down", "connection lost, retrying…");
    }
    // The server says so when this browser already holds its share of long
    // polls (another tab): this tab then polls at the advised interval.
    const advice = message.advice;
    if (advice) {
        const box = $("advice");
        if (advice["multiple-clients"]) {
            const seconds = (advice.interval || 0) / 1000;
            box.textContent = `another tab is connected: polling every ${seconds} s`;
            box.hidden = false;
        } else {
            box.hidden = true;
            box.textContent = "";
        }
    }
});

window.addEventListener("pagehide", () => {
    if (!cometd.isDisconnected()) {
        cometd.disconnect();
    }
});

cometd.handshake();

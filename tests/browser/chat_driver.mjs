// Drives the chat example (examples/chat) in Debian's Chromium with
// playwright-core, one scenario per run, and prints one JSON line.
//
//   node chat_driver.mjs SCENARIO BASE_URL [--screenshot PATH]
//        [--chromium /usr/bin/chromium] [--step-timeout MS] [--timeout MS]
//
// BASE_URL is the server's root (http://127.0.0.1:PORT); the page is /chat/.
// Scenarios:
//   two_users   two browser contexts (two users) over WebSocket; then one leaves
//   two_tabs    two pages of one context over long-polling (multiple-clients advice)
//   mixed       one user over WebSocket, one over long-polling (?transport=long-polling)
//   recover     one user offline longer than the server keeps a session; the
//               messages said meanwhile come back (RecoveryExtension); --transport
//
// Output: {"ok", "scenario", "elapsed_ms", "result", "error", "step", "pages",
// "console"}.  `result` holds what the scenario observed (the Python test
// asserts on it); `pages` is a snapshot of every page when the run ended.
// Every wait is bounded by --step-timeout, the whole run by --timeout.
// Exit status: 0 ok, 1 a step failed, 2 overall timeout, 3 usage.

import {chromium} from "playwright-core";

const LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

function parseArgs(argv) {
    const options = {
        screenshot: null,
        chromium: "/usr/bin/chromium",
        trustSpki: null,
        transport: "websocket",
        stepTimeout: 8000,
        timeout: 40000,
    };
    const positional = [];
    for (let i = 0; i < argv.length; ++i) {
        const arg = argv[i];
        const value = () => {
            if (i + 1 >= argv.length) {
                throw new Error(`${arg} needs a value`);
            }
            return argv[++i];
        };
        if (arg === "--screenshot") {
            options.screenshot = value();
        } else if (arg === "--chromium") {
            options.chromium = value();
        } else if (arg === "--step-timeout") {
            options.stepTimeout = Number(value());
        } else if (arg === "--timeout") {
            options.timeout = Number(value());
        } else if (arg === "--transport") {
            options.transport = value();
        } else if (arg === "--trust-spki") {
            // A server certificate made at test time: Chromium trusts the key
            // with this SHA-256 SPKI pin (and no other untrusted one).
            options.trustSpki = value();
        } else if (arg.startsWith("--")) {
            throw new Error(`unknown option ${arg}`);
        } else {
            positional.push(arg);
        }
    }
    if (positional.length !== 2) {
        throw new Error("usage: chat_driver.mjs SCENARIO BASE_URL [options]");
    }
    [options.scenario, options.base] = positional;
    options.base = options.base.replace(/\/+$/, "");
    return options;
}

const started = Date.now();
const consoleLines = [];
const pages = new Map();   // name -> ChatPage
let currentStep = "start";

function emit(report) {
    process.stdout.write(JSON.stringify({
        scenario: options.scenario,
        elapsed_ms: Date.now() - started,
        step: currentStep,
        console: consoleLines.slice(-200),
        ...report,
    }) + "\n");
}

async function step(name, fn) {
    currentStep = name;
    return await fn();
}

class ChatPage {
    constructor(name, page, timeout) {
        this.name = name;
        this.page = page;
        this.timeout = timeout;
        page.setDefaultTimeout(timeout);
        this.offline = false;  // (errors then are the outage's, not the page's)
        page.on("console", (m) => {
            if (m.type() === "error" || m.type() === "warning") {
                const kind = this.offline ? `${m.type()} while offline` : m.type();
                consoleLines.push(`${name} ${kind}: ${m.text()}`);
            }
        });
        page.on("pageerror", (e) => consoleLines.push(`${name} pageerror: ${e.message}`));
        pages.set(name, this);
    }

    async open(base, path) {
        await this.page.goto(base + path, {timeout: this.timeout});
        await this.page.waitForSelector('#state[data-state="connected"]');
        await this.page.waitForSelector("#join:enabled");
    }

    async join(name) {
        await this.page.fill("#name", name);
        await this.page.click("#join");
        await this.page.waitForSelector("#text:enabled");
    }

    async say(text) {
        await this.page.fill("#text", text);
        await this.page.press("#text", "Enter");
    }

    async waitFor(fn, arg) {
        await this.page.waitForFunction(fn, arg, {timeout: this.timeout, polling: 100});
    }

    async waitMessages(texts) {
        await this.waitFor((wanted) => {
            const seen = [...document.querySelectorAll("#log .message .text")]
                .map((e) => e.textContent);
            return wanted.every((t) => seen.includes(t));
        }, texts);
    }

    // Each message text in the log, in order.
    async texts() {
        return await this.page.evaluate(() => [...document.querySelectorAll("#log .message .text")]
            .map((e) => e.textContent));
    }

    async waitNotice(text) {
        await this.waitFor((wanted) => [...document.querySelectorAll("#log .notice")]
            .some((e) => e.textContent.startsWith(wanted)), text);
    }

    async snapshot() {
        if (this.page.isClosed()) {
            return {closed: true};
        }
        return await this.page.evaluate(() => {
            const texts = (selector) => [...document.querySelectorAll(selector)]
                .map((e) => e.textContent);
            const advice = document.getElementById("advice");
            return {
                url: location.href,
                state: document.getElementById("state").dataset.state,
                status: document.getElementById("state").textContent,
                transport: document.getElementById("transport").textContent,
                advice: advice.hidden ? null : advice.textContent,
                members: texts("#members li"),
                messages: [...document.querySelectorAll("#log .message")].map((li) => ({
                    user: li.querySelector(".user").textContent,
                    text: li.querySelector(".text").textContent,
                })),
                notices: texts("#log .notice"),
                // Elements a user's text could have smuggled into the log.
                foreign_elements: [...document.querySelectorAll("#log *")]
                    .filter((e) => !["LI", "TIME", "SPAN"].includes(e.tagName))
                    .map((e) => e.tagName),
                error: document.getElementById("error").textContent,
            };
        });
    }
}

async function snapshots() {
    const result = {};
    for (const [name, chat] of pages) {
        try {
            result[name] = await chat.snapshot();
        } catch (error) {
            result[name] = {snapshot_error: String(error)};
        }
    }
    return result;
}

// ------------------------------------------------------------ scenarios

const scenarios = {
    // Two users in two browser contexts (separate cookies), WebSocket.
    async two_users(browser, o) {
        const alice = new ChatPage("alice", await (await browser.newContext()).newPage(),
            o.stepTimeout);
        const bobContext = await browser.newContext();
        const bob = new ChatPage("bob", await bobContext.newPage(), o.stepTimeout);
        await step("open pages", () => Promise.all([
            alice.open(o.base, "/chat/"), bob.open(o.base, "/chat/")]));
        await step("join", async () => {
            await alice.join("alice");
            await bob.join("bob");
        });
        await step("both see both members", () => Promise.all([alice, bob].map((p) => p.waitFor(
            () => document.querySelectorAll("#members li").length === 2))));
        const hello = "hello from alice";
        const hostile = "<img src=x onerror=\"document.title='pwned'\"> <b>hi</b> alice";
        await step("chat", async () => {
            await alice.say(hello);
            await alice.waitMessages([hello]);
            await bob.say(hostile);
        });
        await step("both see both messages", () => Promise.all([
            alice.waitMessages([hello, hostile]), bob.waitMessages([hello, hostile])]));
        const during = await snapshots();
        const title = await alice.page.title();
        if (o.screenshot) {
            await step("screenshot", () => alice.page.screenshot({path: o.screenshot}));
        }
        await step("bob closes his tab", () => bobContext.close());
        await step("alice sees bob leave", () => alice.waitNotice("bob left"));
        await step("alice alone", () => alice.waitFor(
            () => document.querySelectorAll("#members li").length === 1));
        return {during, alice_title: title, after_leave: await alice.snapshot()};
    },

    // Two tabs (pages) of one browser context share the BAYEUX_BROWSER cookie:
    // over long-polling, the second held connect gets multiple-clients advice.
    async two_tabs(browser, o) {
        const context = await browser.newContext();
        const tab1 = new ChatPage("tab1", await context.newPage(), o.stepTimeout);
        const tab2 = new ChatPage("tab2", await context.newPage(), o.stepTimeout);
        await step("open tab 1", () => tab1.open(o.base, "/chat/?transport=long-polling"));
        await step("open tab 2", () => tab2.open(o.base, "/chat/?transport=long-polling"));
        await step("join", async () => {
            await tab1.join("carol");
            await tab2.join("dave");
        });
        const adviced = await step("multiple-clients advice in one tab", () => Promise.any(
            [tab1, tab2].map(async (p) => {
                await p.page.waitForSelector("#advice:not([hidden])");
                return p.name;
            })));
        const atAdvice = await snapshots();
        const one = "from tab 1";
        const two = "from tab 2";
        await step("tab 1 speaks", () => tab1.say(one));
        await step("tab 2 speaks", () => tab2.say(two));
        await step("both tabs see both messages", () => Promise.all([
            tab1.waitMessages([one, two]), tab2.waitMessages([one, two])]));
        return {adviced, at_advice: atAdvice, after: await snapshots()};
    },

    // One user over WebSocket, one over long-polling, in the same room.  The
    // long-polling one opens /chat (no slash): the page redirects to /chat/.
    async mixed(browser, o) {
        const ws = new ChatPage("ws", await (await browser.newContext()).newPage(),
            o.stepTimeout);
        const lp = new ChatPage("lp", await (await browser.newContext()).newPage(),
            o.stepTimeout);
        await step("open pages", () => Promise.all([
            ws.open(o.base, "/chat/"), lp.open(o.base, "/chat?transport=long-polling")]));
        await step("join", async () => {
            await ws.join("erin");
            await lp.join("frank");
        });
        const a = "sent over websocket";
        const b = "sent over long-polling";
        await step("chat", async () => {
            await ws.say(a);
            await lp.say(b);
        });
        await step("both see both messages", () => Promise.all([
            ws.waitMessages([a, b]), lp.waitMessages([a, b])]));
        return {after: await snapshots()};
    },

    // gina's network goes down for longer than the server keeps a session
    // (its max-interval); hank speaks meanwhile.  Back online, CometD
    // handshakes again, the page subscribes again, and the RecoveryExtension
    // brings the missed messages: each once, in order, before a later one.
    // Offline emulation stops HTTP but leaves open WebSockets alone, so
    // gina's WebSockets go through a route that the outage closes (and that
    // refuses new ones until it ends).
    async recover(browser, o) {
        const ginaContext = await browser.newContext();
        const sockets = new Set();
        let down = false;
        const routed = {opened: 0, refused: 0, closed: 0};
        await ginaContext.routeWebSocket(/\/cometd/, (ws) => {
            if (down) {
                routed.refused += 1;
                ws.close({code: 1001, reason: "offline"});
                return;
            }
            routed.opened += 1;
            sockets.add({ws, server: ws.connectToServer()});
        });
        const gina = new ChatPage("gina", await ginaContext.newPage(), o.stepTimeout);
        const hank = new ChatPage("hank", await (await browser.newContext()).newPage(),
            o.stepTimeout);
        const path = `/chat/?transport=${o.transport}`;
        await step("open pages", () => Promise.all([gina.open(o.base, path), hank.open(o.base, path)]));
        await step("join", async () => {
            await gina.join("gina");
            await hank.join("hank");
        });
        await step("before", async () => {
            await hank.say("before");
            await gina.waitMessages(["before"]);
        });
        await step("gina goes offline", async () => {
            down = true;
            gina.offline = true;
            await ginaContext.setOffline(true);
            for (const {ws, server} of sockets) {
                routed.closed += 1;
                await server.close({code: 1001, reason: "offline"});
                await ws.close({code: 1001, reason: "offline"});
            }
            sockets.clear();
            await gina.page.waitForSelector('#state[data-state="down"]');
        });
        const away = ["away 1", "away 2", "away 3"];
        await step("hank speaks while gina is away", async () => {
            for (const text of away) {
                await hank.say(text);
            }
            await hank.waitMessages(away);
        });
        const sawBefore = await gina.texts();
        // Until the server has forgotten her session (a held connect's timeout,
        // then its max-interval): hank hears she left.
        await step("the server drops gina's session", () => hank.page.waitForFunction(
            () => [...document.querySelectorAll("#log .notice")]
                .some((e) => e.textContent === "gina left (timed out)"),
            null, {timeout: 20000, polling: 100}));
        await step("gina is back", async () => {
            down = false;
            await ginaContext.setOffline(false);
            await gina.waitMessages(away);
            gina.offline = false;
        });
        await step("after", async () => {
            await hank.say("after");
            await gina.waitMessages(["after"]);
        });
        return {saw_before_back: sawBefore, texts: await gina.texts(), routed, after: await snapshots()};
    },
};

// ----------------------------------------------------------------- main

let options;
try {
    options = parseArgs(process.argv.slice(2));
    if (!(options.scenario in scenarios)) {
        throw new Error(`unknown scenario ${options.scenario}; known: ${Object.keys(scenarios)}`);
    }
} catch (error) {
    process.stderr.write(`${error.message}\n`);
    process.exit(3);
}

let browser = null;
const overall = setTimeout(async () => {
    emit({ok: false, error: `overall timeout of ${options.timeout} ms`, pages: await snapshots()});
    process.exit(2);
}, options.timeout);

let status = 0;
try {
    browser = await step("launch chromium", () => chromium.launch({
        executablePath: options.chromium,
        headless: true,
        args: options.trustSpki
            ? [...LAUNCH_ARGS, `--ignore-certificate-errors-spki-list=${options.trustSpki}`]
            : LAUNCH_ARGS,
        timeout: options.stepTimeout * 2,
    }));
    const result = await scenarios[options.scenario](browser, options);
    currentStep = "done";
    emit({ok: true, result, error: null, pages: await snapshots()});
} catch (error) {
    status = 1;
    const text = error instanceof AggregateError
        ? error.errors.map(String).join("; ")
        : String(error && error.stack || error);
    emit({ok: false, result: null, error: text, pages: await snapshots()});
} finally {
    clearTimeout(overall);
    if (browser !== null) {
        await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 5000))]);
    }
}
process.exit(status);

// Runs the data-plane Worker in workerd (through miniflare) on 127.0.0.1, for tests and by hand.
//
//   DUALCACHE_TOKEN=... node infra/worker/dev.mjs      (no DUALCACHE_TOKEN: a Worker without the secret)
//
// DUALCACHE_RATE_LIMITS='{"USER_LIMITS": {"limit": 100, "period": 60}}' also binds those Workers Rate Limiting
// bindings (miniflare's `ratelimits`; period 10 or 60), as the stack's dataPlane.rateLimits declares them.
//
// The module is health.js + "\n" + dataplane.js, exactly what the stack uploads. The six KV namespaces are
// in memory. Prints the Worker's URL as its first stdout line, then answers commands read from stdin, one a
// line, with one stdout line each:
//
//   advance <seconds>   moves the KV clock of RATE_LIMITS forward  -> "ok advance <seconds>" | "error <why>"
//
// The clock is miniflare's fake timers in the KV simulator's object, reached through its (internal, unsafe)
// control endpoints, as miniflare's own KV tests do. Only RATE_LIMITS is clocked: a namespace that received a
// control op caps values at 1 KiB (miniflare's "being tested" limit), so large values go elsewhere.
// Exits when stdin closes, so it never outlives the process that started it.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Miniflare, _enableControlEndpoints } from "miniflare";

const HERE = dirname(fileURLToPath(import.meta.url));
const BINDINGS = ["SESSIONS", "RATE_LIMITS", "OAUTH_STATES", "JOB_ANALYSIS_CACHE", "EMBEDDINGS_CACHE", "API_CACHE"];
const CLOCKED = "RATE_LIMITS";

// The data-plane module as the stack uploads it: one ES module string.
export function dataPlaneModule() {
  const read = (name) => readFileSync(join(HERE, name), "utf-8");
  return `${read("health.js")}\n${read("dataplane.js")}`;
}

// {"NAME": {"limit", "period"}} from DUALCACHE_RATE_LIMITS into miniflare's {"NAME": {"simple": {...}}}.
function rateLimits() {
  const raw = process.env.DUALCACHE_RATE_LIMITS;
  if (!raw) return {};
  return Object.fromEntries(
    Object.entries(JSON.parse(raw)).map(([name, { limit, period }]) => [name, { simple: { limit, period } }]),
  );
}

async function main() {
  _enableControlEndpoints();
  const token = process.env.DUALCACHE_TOKEN;
  const mf = new Miniflare({
    host: "127.0.0.1",
    port: 0,
    compatibilityDate: "2026-04-01",
    modules: [{ type: "ESModule", path: join(HERE, "dataplane.js"), contents: dataPlaneModule() }],
    kvNamespaces: Object.fromEntries(BINDINGS.map((name) => [name, name])),
    bindings: token ? { DUALCACHE_TOKEN: token } : {},
    ratelimits: rateLimits(),
    // No request log: it costs a round trip to Node per request, and its lines would name keys.
    logRequests: false,
  });
  const url = await mf.ready;

  let stub;
  let fakeEnabled = false;
  async function control(name, ...args) {
    if (stub === undefined) {
      const ns = await mf._getInternalDurableObjectNamespace("kv", "kv:ns", "KVNamespaceObject");
      stub = ns.get(ns.idFromName(CLOCKED));
    }
    const response = await stub.fetch("http://placeholder/", { cf: { miniflare: { controlOp: { name, args } } } });
    const text = await response.text();
    if (!response.ok) throw new Error(`control op ${name} answered ${response.status}: ${text}`);
  }

  let closing = false;
  async function close(code) {
    if (closing) return;
    closing = true;
    await mf.dispose().catch(() => {});
    process.exit(code);
  }
  process.on("SIGTERM", () => close(0));
  process.on("SIGINT", () => close(0));

  process.stdout.write(`${url.href.replace(/\/$/, "")}\n`);
  const lines = createInterface({ input: process.stdin });
  lines.on("line", async (line) => {
    const [command, arg] = line.trim().split(/\s+/);
    try {
      if (command !== "advance" || !/^[0-9]+$/.test(arg ?? "")) {
        throw new Error(`unknown command ${JSON.stringify(line)}; expected "advance <seconds>"`);
      }
      if (!fakeEnabled) {
        await control("enableFakeTimers", Date.now());
        fakeEnabled = true;
      }
      await control("advanceFakeTime", Number(arg) * 1000);
      process.stdout.write(`ok advance ${arg}\n`);
    } catch (err) {
      process.stdout.write(`error ${String(err.message || err).replace(/\n/g, " ")}\n`);
    }
  });
  lines.on("close", () => close(0));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((err) => {
    process.stderr.write(`${err.stack || err}\n`);
    process.exit(1);
  });
}

// The health Worker: deployed when the stack names no app bundle, so a fresh `pulumi up` can be checked.
//
// GET /health answers JSON:
//   bindings: which of the expected bindings are present (secrets: only whether they are set, never values)
//   checks.kv: a write, read back and delete of a short-lived key in API_CACHE
//   checks.gateway: one Workers AI embedding call routed through the AI Gateway named by AI_GATEWAY_SLUG
// Status 200 when every binding is present and both checks pass, else 503.
// GET /health?probes=0 reports the bindings only (no KV write, no AI call).

const KV_BINDINGS = [
  "SESSIONS",
  "RATE_LIMITS",
  "OAUTH_STATES",
  "JOB_ANALYSIS_CACHE",
  "EMBEDDINGS_CACHE",
  "API_CACHE",
];
const VARS = ["AI_GATEWAY_SLUG", "CLOUDFLARE_ACCOUNT_ID"];
const SECRETS = ["OPENAI_API_KEY", "CF_AIG_TOKEN"];
const EMBEDDING_MODEL = "@cf/baai/bge-base-en-v1.5";
// KV rejects expiration_ttl below 60 seconds.
const KV_TTL_SECONDS = 60;

function isKv(value) {
  return value != null && typeof value.get === "function" && typeof value.put === "function";
}

export function describeBindings(env) {
  const bindings = {};
  for (const name of KV_BINDINGS) bindings[name] = isKv(env[name]);
  bindings.AI = env.AI != null && typeof env.AI.run === "function";
  for (const name of VARS) bindings[name] = typeof env[name] === "string" && env[name].length > 0;
  const secrets = {};
  for (const name of SECRETS) secrets[name] = typeof env[name] === "string" && env[name].length > 0;
  return { bindings, secrets };
}

async function timed(fn) {
  const started = Date.now();
  try {
    const detail = await fn();
    return { ok: true, ms: Date.now() - started, ...detail };
  } catch (err) {
    return { ok: false, ms: Date.now() - started, error: String((err && err.message) || err) };
  }
}

export async function checkKv(env) {
  if (!isKv(env.API_CACHE)) throw new Error("API_CACHE is not bound");
  const key = `health:${crypto.randomUUID()}`;
  const value = `ok ${new Date().toISOString()}`;
  await env.API_CACHE.put(key, value, { expirationTtl: KV_TTL_SECONDS });
  // A read from the writing location normally sees the write at once, but KV does not guarantee it.
  const read = await env.API_CACHE.get(key);
  await env.API_CACHE.delete(key);
  if (read !== value) throw new Error(`read back ${JSON.stringify(read)} instead of the value written`);
  return { namespace: "API_CACHE" };
}

export async function checkGateway(env) {
  if (!env.AI || typeof env.AI.run !== "function") throw new Error("AI is not bound");
  if (!env.AI_GATEWAY_SLUG) throw new Error("AI_GATEWAY_SLUG is not set");
  // skipCache: the point is to reach the provider through the gateway, not to read its cache.
  // Whether an authenticated gateway also demands cf-aig-authorization for binding calls is not stated in the
  // docs we have; if it does, this check fails with the gateway's error, which is reported as is.
  const result = await env.AI.run(
    EMBEDDING_MODEL,
    { text: ["health check"] },
    { gateway: { id: env.AI_GATEWAY_SLUG, skipCache: true, metadata: { source: "health" } } },
  );
  const vector = result && Array.isArray(result.data) ? result.data[0] : undefined;
  if (!Array.isArray(vector) || vector.length === 0) throw new Error("the embedding answer has no vector");
  return { gateway: env.AI_GATEWAY_SLUG, model: EMBEDDING_MODEL, dimensions: vector.length, logId: env.AI.aiGatewayLogId ?? null };
}

export async function health(env, { probes = true } = {}) {
  const { bindings, secrets } = describeBindings(env);
  const checks = probes
    ? { kv: await timed(() => checkKv(env)), gateway: await timed(() => checkGateway(env)) }
    : {};
  const ok = Object.values(bindings).every(Boolean) && Object.values(checks).every((c) => c.ok);
  return { ok, bindings, secrets, checks };
}

// The health route, exported so that the data-plane Worker serves the same one (see below).
export async function handleHealth(request, env) {
  const url = new URL(request.url);
  if (url.pathname !== "/health") {
    return Response.json({ error: "not found; try GET /health" }, { status: 404 });
  }
  if (request.method !== "GET") {
    return Response.json({ error: "method not allowed; use GET" }, { status: 405, headers: { allow: "GET" } });
  }
  const report = await health(env, { probes: url.searchParams.get("probes") !== "0" });
  return Response.json(report, { status: report.ok ? 200 : 503, headers: { "cache-control": "no-store" } });
}

// One source, two Workers. Deployed alone, this module is the health Worker. The data-plane Worker's module
// is this file followed by dataplane.js (one ES module string): dataplane.js reuses the names above and
// replaces `worker.fetch` with its own router, which sends GET /health here. So nothing of the health check
// is copied, and neither file may declare a top-level name that the other declares.
const worker = { fetch: handleHealth };
export default worker;

// dualcache's data-plane Worker: the KV API of infra/worker/DATAPLANE.md over the six KV bindings.
//
// This file is the second half of ONE ES module: the uploaded (and tested) module is health.js, a newline, then
// this file. It uses health.js's `KV_BINDINGS`, `handleHealth` and `worker` (whose `fetch` it replaces below),
// so GET /health is the health Worker's own code. Top-level names here must not repeat health.js's.
//
// Every limit is checked before KV is touched; request bodies are read with a bound. The Worker never logs,
// and no response carries the token or (except a successful read) a value.

const DP_MIB = 1024 * 1024;
const DP_LIMITS = {
  keyBytes: 512,
  metadataBytes: 1024,
  valueBytes: 25 * DP_MIB,
  minTtlSeconds: 60,
  // The binding takes expiration and expirationTtl as 32-bit integers (workerd: "Value out of range").
  maxSeconds: 2 ** 31 - 1,
  batchKeys: 100,
  listMin: 10,
  listMax: 1000,
  // A single put: the value plus room for a multipart envelope and its metadata part.
  singleBody: 25 * DP_MIB + 1024,
  bulkBody: 32 * DP_MIB,
};
// Workers allow 6 simultaneous outgoing connections per invocation; KV operations beyond that queue anyway.
const DP_CONCURRENCY = 6;
// Error codes: 10000 auth, 10009 key not found, 10013 unknown binding (KV REST's); the rest are this API's own.
const DP_CODES = {
  auth: 10000,
  invalid: 10001,
  kv: 10002,
  route: 10003,
  method: 10004,
  notFound: 10009,
  binding: 10013,
  key: 10020,
  metadata: 10021,
  value: 10022,
  expiration_ttl: 10023,
  expiration: 10024,
  body: 10025,
  keys: 10026,
  limit: 10027,
  type: 10028,
  cursor: 10029,
  prefix: 10030,
  ratelimiter: 10031,
};

class DataPlaneError extends Error {
  constructor(status, code, message, extra = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.extra = extra;
  }
}

function limitError(field, limit, message, extra = {}) {
  return new DataPlaneError(field === "body" ? 413 : 400, DP_CODES[field] ?? DP_CODES.invalid, message, {
    field,
    ...(limit === undefined ? {} : { limit }),
    ...extra,
  });
}

function envelope(result, extra = {}) {
  return { success: true, errors: [], messages: [], result, ...extra };
}

function errorResponse(status, error) {
  return Response.json({ success: false, errors: [error], messages: [], result: null }, { status });
}

function unauthorized() {
  // The same answer for a missing, malformed or wrong token, and for a Worker without DUALCACHE_TOKEN.
  return errorResponse(401, { code: DP_CODES.auth, message: "Authentication error" });
}

const dpEncoder = new TextEncoder();

async function sha256(text) {
  return crypto.subtle.digest("SHA-256", dpEncoder.encode(text));
}

async function authorized(request, env) {
  const expected = env.DUALCACHE_TOKEN;
  if (typeof expected !== "string" || expected.length === 0) return false;
  const header = request.headers.get("authorization") ?? "";
  // The scheme is case-insensitive (RFC 9110); the token is not.
  const given = /^bearer /i.test(header) ? header.slice("Bearer ".length) : "";
  // Hash both sides: equal lengths for timingSafeEqual, and the comparison time says nothing about the token.
  const [a, b] = await Promise.all([sha256(given), sha256(expected)]);
  return crypto.subtle.timingSafeEqual(a, b) && given.length > 0;
}

function checkKey(key, extra = {}) {
  if (typeof key !== "string") throw limitError("key", DP_LIMITS.keyBytes, "a key must be a string", extra);
  const bytes = dpEncoder.encode(key).byteLength;
  if (bytes === 0) throw limitError("key", DP_LIMITS.keyBytes, "a key must not be empty", extra);
  if (bytes > DP_LIMITS.keyBytes) {
    throw limitError("key", DP_LIMITS.keyBytes, `key is ${bytes} bytes (UTF-8); the limit is ${DP_LIMITS.keyBytes}`, extra);
  }
  if (key === "." || key === "..") throw limitError("key", DP_LIMITS.keyBytes, `"${key}" is not allowed as a key`, extra);
  return key;
}

// Returns the metadata as the binding will store it (parsed JSON), after checking its serialized size.
function checkMetadata(metadata, extra = {}) {
  if (metadata === undefined || metadata === null) return undefined;
  const serialized = JSON.stringify(metadata);
  const bytes = dpEncoder.encode(serialized).byteLength;
  if (bytes > DP_LIMITS.metadataBytes) {
    throw limitError(
      "metadata",
      DP_LIMITS.metadataBytes,
      `metadata is ${bytes} bytes serialized; the limit is ${DP_LIMITS.metadataBytes}`,
      extra,
    );
  }
  return metadata;
}

function checkValueSize(bytes, extra = {}) {
  if (bytes > DP_LIMITS.valueBytes) {
    throw limitError("value", DP_LIMITS.valueBytes, `value is ${bytes} bytes; the limit is ${DP_LIMITS.valueBytes}`, extra);
  }
}

// expiration_ttl (seconds, integer >= 60) and expiration (unix seconds, integer, >= 60 s from now) into binding
// options. When both are given, expiration_ttl wins, as in the KV REST API. `raw` values are strings (query) or
// numbers (bulk items).
function expirationOptions(rawTtl, rawExpiration, extra = {}) {
  const asInt = (raw) => {
    if (typeof raw === "number") return Number.isSafeInteger(raw) ? raw : NaN;
    return /^[0-9]{1,15}$/.test(String(raw)) ? Number(raw) : NaN;
  };
  if (rawTtl !== undefined && rawTtl !== null && rawTtl !== "") {
    const ttl = asInt(rawTtl);
    if (!(ttl >= DP_LIMITS.minTtlSeconds && ttl <= DP_LIMITS.maxSeconds)) {
      throw limitError(
        "expiration_ttl",
        DP_LIMITS.minTtlSeconds,
        `expiration_ttl ${JSON.stringify(rawTtl)} is not an integer in ${DP_LIMITS.minTtlSeconds}..${DP_LIMITS.maxSeconds}`,
        extra,
      );
    }
    return { expirationTtl: ttl };
  }
  if (rawExpiration !== undefined && rawExpiration !== null && rawExpiration !== "") {
    const expiration = asInt(rawExpiration);
    const earliest = Math.floor(Date.now() / 1000) + DP_LIMITS.minTtlSeconds;
    // KV checks this too, against its own clock; its refusal is also a 400 (see kvFailure).
    if (!(expiration >= earliest && expiration <= DP_LIMITS.maxSeconds)) {
      throw limitError(
        "expiration",
        DP_LIMITS.minTtlSeconds,
        `expiration ${JSON.stringify(rawExpiration)} is not a unix time (s) at least ${DP_LIMITS.minTtlSeconds} s from now ` +
          `and at most ${DP_LIMITS.maxSeconds}`,
        extra,
      );
    }
    return { expiration };
  }
  return {};
}

// An unread request body makes the runtime close the connection with bytes unread, which resets it (the
// client may lose the answer). So a refused body is read on and thrown away, up to this much in all.
const DP_DRAIN_MAX = 64 * DP_MIB;

async function discard(reader, seen) {
  let total = seen;
  for (;;) {
    if (total > DP_DRAIN_MAX) return reader.cancel();
    const { done, value } = await reader.read();
    if (done) return undefined;
    total += value.byteLength;
  }
}

// Throws a request body away (bounded, see DP_DRAIN_MAX) if the handler left it unread.
async function drain(request) {
  if (request.body === null || request.bodyUsed) return;
  try {
    await discard(request.body.getReader(), 0);
  } catch {
    // The client went away; nothing to answer.
  }
}

// Reads a request body into memory with a bound: the content-length first, then the bytes actually received.
async function readBody(request, max) {
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > max) {
    throw limitError("body", max, `request body is ${declared} bytes; the limit is ${max}`);
  }
  if (request.body === null) return new Uint8Array(0);
  const reader = request.body.getReader();
  const chunks = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > max) {
      await discard(reader, total);
      throw limitError("body", max, `request body is over ${max} bytes; the limit is ${max}`);
    }
    chunks.push(value);
  }
  const body = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    body.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return body;
}

async function readJson(request, max) {
  const body = await readBody(request, max);
  try {
    return JSON.parse(new TextDecoder().decode(body));
  } catch {
    throw new DataPlaneError(400, DP_CODES.invalid, "the request body is not valid JSON", { field: "body" });
  }
}

// Maps an exception of a KV binding call. The binding's messages ("KV PUT failed: 400 ...") carry a status and
// never the value; a 4xx means KV refused the input (e.g. an expiration that is in the past on KV's clock).
function kvFailure(err) {
  if (err instanceof DataPlaneError) return err;
  const message = String((err && err.message) || err);
  const match = /KV \w+ failed: (\d{3})/.exec(message);
  const status = match ? Number(match[1]) : 0;
  if (status === 429) return new DataPlaneError(429, DP_CODES.kv, "KV rate limited the operation (429)");
  if (status >= 400 && status < 500) return new DataPlaneError(400, DP_CODES.kv, `KV refused the operation: ${message}`);
  if (err instanceof TypeError) return new DataPlaneError(400, DP_CODES.kv, `KV refused the operation: ${message}`);
  return new DataPlaneError(502, DP_CODES.kv, "the KV operation failed");
}

// The metadata header is ASCII: JSON with every non-ASCII character escaped, which any JSON parser reads back.
function asciiJson(value) {
  return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

// Runs `fn` over `items` with at most `limit` in flight; returns the results in order.
async function mapBounded(items, limit, fn) {
  const results = new Array(items.length);
  let next = 0;
  const run = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await fn(items[index], index);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, run));
  return results;
}

function checkBatch(array, what) {
  if (!Array.isArray(array)) {
    throw new DataPlaneError(400, DP_CODES.invalid, `the body must be a JSON array of ${what}`, { field: "body" });
  }
  if (array.length > DP_LIMITS.batchKeys) {
    throw limitError("keys", DP_LIMITS.batchKeys, `${array.length} ${what} in one batch; the limit is ${DP_LIMITS.batchKeys} keys`);
  }
  return array;
}

function base64Bytes(text, extra) {
  try {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  } catch {
    throw new DataPlaneError(400, DP_CODES.value, "value is not valid base64", { field: "value", ...extra });
  }
}

// Listing one key's expiration: a list with the key as prefix starts with the key itself when it exists.
// KV listings are eventually consistent: right after a write (elsewhere), the key may not be listed yet; then
// the answer has no expiration header rather than a wrong one.
async function expirationOf(kv, key) {
  const page = await kv.list({ prefix: key, limit: 1 });
  const first = page.keys[0];
  return first && first.name === key && first.expiration !== undefined ? first.expiration : undefined;
}

const dpRoutes = {
  async getValue(kv, key, request, url) {
    const wantExpiration = url.searchParams.get("expiration") === "true";
    const { value, metadata } = await kv.getWithMetadata(key, { type: "arrayBuffer" });
    if (value === null) return errorResponse(404, { code: DP_CODES.notFound, message: "get: 'key not found'" });
    const headers = new Headers({ "content-type": "application/octet-stream" });
    if (metadata !== null && metadata !== undefined) headers.set("cf-kv-metadata", asciiJson(metadata));
    if (wantExpiration) {
      const expiration = await expirationOf(kv, key);
      if (expiration !== undefined) headers.set("expiration", String(expiration));
    }
    return new Response(value, { headers });
  },

  async getMetadata(kv, key) {
    const { value, metadata } = await kv.getWithMetadata(key, { type: "stream" });
    if (value === null) return errorResponse(404, { code: DP_CODES.notFound, message: "get: 'key not found'" });
    await value.cancel();
    return Response.json(envelope(metadata ?? null));
  },

  async putValue(kv, key, request, url) {
    const options = expirationOptions(url.searchParams.get("expiration_ttl"), url.searchParams.get("expiration"));
    const contentType = request.headers.get("content-type") ?? "";
    const body = await readBody(request, DP_LIMITS.singleBody);
    let value = body;
    if (/^multipart\/form-data/i.test(contentType)) {
      let form;
      try {
        form = await new Response(body, { headers: { "content-type": contentType } }).formData();
      } catch {
        throw new DataPlaneError(400, DP_CODES.invalid, "the multipart body cannot be parsed", { field: "body" });
      }
      const part = form.get("value");
      if (part === null) throw new DataPlaneError(400, DP_CODES.value, "the multipart body has no value part", { field: "value" });
      value = typeof part === "string" ? dpEncoder.encode(part) : new Uint8Array(await part.arrayBuffer());
      const rawMetadata = form.get("metadata");
      if (rawMetadata !== null) {
        const text = typeof rawMetadata === "string" ? rawMetadata : await rawMetadata.text();
        let parsed;
        try {
          parsed = JSON.parse(text);
        } catch {
          throw new DataPlaneError(400, DP_CODES.metadata, "the metadata part is not valid JSON", {
            field: "metadata",
            limit: DP_LIMITS.metadataBytes,
          });
        }
        const metadata = checkMetadata(parsed);
        if (metadata !== undefined) options.metadata = metadata;
      }
    }
    checkValueSize(value.byteLength);
    await kv.put(key, value, options);
    return Response.json(envelope({}));
  },

  async deleteValue(kv, key) {
    await kv.delete(key);
    return Response.json(envelope({}));
  },

  async bulkGet(kv, request) {
    const body = await readJson(request, DP_LIMITS.bulkBody);
    if (body === null || typeof body !== "object" || !Array.isArray(body.keys)) {
      throw new DataPlaneError(400, DP_CODES.invalid, 'the body must be {"keys": [...]}', { field: "keys" });
    }
    const keys = checkBatch(body.keys, "keys");
    keys.forEach((key, index) => checkKey(key, { index }));
    const type = body.type ?? "text";
    if (type !== "text" && type !== "json") {
      throw new DataPlaneError(400, DP_CODES.type, `type ${JSON.stringify(type)} is not "text" or "json"`, { field: "type" });
    }
    if (body.withMetadata !== undefined && typeof body.withMetadata !== "boolean") {
      throw new DataPlaneError(400, DP_CODES.invalid, "withMetadata must be a boolean", { field: "withMetadata" });
    }
    const withMetadata = body.withMetadata === true;
    const values = {};
    if (keys.length > 0) {
      // The binding's multi-key get: one KV operation for up to 100 keys. Present in the workerd that
      // miniflare 4.20260426.0 carries (tested by tests/contract), and in production since 2025.
      const found = withMetadata ? await kv.getWithMetadata(keys, { type }) : await kv.get(keys, { type });
      for (const key of keys) {
        const entry = found.get(key);
        if (withMetadata) {
          values[key] = entry && entry.value !== null ? { value: entry.value, metadata: entry.metadata ?? null } : null;
        } else {
          values[key] = entry ?? null;
        }
      }
    }
    return Response.json(envelope({ values }));
  },

  async bulkPut(kv, request) {
    const items = checkBatch(await readJson(request, DP_LIMITS.bulkBody), "items");
    // Validate everything first: a bad item fails the request before any write.
    const writes = items.map((item, index) => {
      if (item === null || typeof item !== "object" || Array.isArray(item)) {
        throw new DataPlaneError(400, DP_CODES.invalid, `item ${index} is not an object`, { field: "body", index });
      }
      const key = checkKey(item.key, { index });
      if (typeof item.value !== "string") {
        throw new DataPlaneError(400, DP_CODES.value, `item ${index}: value must be a string`, { field: "value", index });
      }
      const value = item.base64 === true ? base64Bytes(item.value, { index }) : dpEncoder.encode(item.value);
      checkValueSize(value.byteLength, { index });
      const options = expirationOptions(item.expiration_ttl, item.expiration, { index });
      const metadata = checkMetadata(item.metadata, { index });
      if (metadata !== undefined) options.metadata = metadata;
      return { key, value, options };
    });
    const ok = await mapBounded(writes, DP_CONCURRENCY, async ({ key, value, options }) => {
      try {
        await kv.put(key, value, options);
        return true;
      } catch {
        return false;
      }
    });
    return Response.json(
      envelope({
        successful_key_count: ok.filter(Boolean).length,
        unsuccessful_keys: writes.filter((_, i) => !ok[i]).map((w) => w.key),
      }),
    );
  },

  async bulkDelete(kv, request) {
    const keys = checkBatch(await readJson(request, DP_LIMITS.bulkBody), "keys");
    keys.forEach((key, index) => checkKey(key, { index }));
    const ok = await mapBounded(keys, DP_CONCURRENCY, async (key) => {
      try {
        await kv.delete(key);
        return true;
      } catch {
        return false;
      }
    });
    return Response.json(
      envelope({
        successful_key_count: ok.filter(Boolean).length,
        unsuccessful_keys: keys.filter((_, i) => !ok[i]),
      }),
    );
  },

  async list(kv, request, url) {
    const rawLimit = url.searchParams.get("limit");
    let limit = DP_LIMITS.listMax;
    if (rawLimit !== null) {
      limit = /^[0-9]{1,7}$/.test(rawLimit) ? Number(rawLimit) : NaN;
      if (!(limit >= DP_LIMITS.listMin && limit <= DP_LIMITS.listMax)) {
        throw limitError(
          "limit",
          DP_LIMITS.listMax,
          `limit ${JSON.stringify(rawLimit)} is not an integer in ${DP_LIMITS.listMin}..${DP_LIMITS.listMax}`,
          { min: DP_LIMITS.listMin },
        );
      }
    }
    const prefix = url.searchParams.get("prefix") ?? "";
    if (dpEncoder.encode(prefix).byteLength > DP_LIMITS.keyBytes) {
      throw limitError("prefix", DP_LIMITS.keyBytes, `prefix is over ${DP_LIMITS.keyBytes} bytes (UTF-8)`);
    }
    const cursor = url.searchParams.get("cursor") || undefined;
    const page = await kv.list({ prefix: prefix || undefined, cursor, limit });
    const result = page.keys.map((k) => ({
      name: k.name,
      ...(k.expiration === undefined ? {} : { expiration: k.expiration }),
      ...(k.metadata === undefined || k.metadata === null ? {} : { metadata: k.metadata }),
    }));
    const next = page.list_complete ? "" : (page.cursor ?? "");
    return Response.json(envelope(result, { result_info: { count: result.length, cursor: next } }));
  },
};

// "/kv/{B}/{rest}" → the handler, by method and the rest of the path (still percent-encoded).
function route(rest) {
  const valuesMatch = /^(values|metadata)\/(.+)$/.exec(rest);
  if (valuesMatch) {
    const [, kind, rawKey] = valuesMatch;
    let key;
    try {
      key = decodeURIComponent(rawKey);
    } catch {
      throw limitError("key", DP_LIMITS.keyBytes, "the key in the path is not valid percent-encoding");
    }
    const table =
      kind === "values"
        ? { GET: dpRoutes.getValue, PUT: dpRoutes.putValue, DELETE: dpRoutes.deleteValue }
        : { GET: dpRoutes.getMetadata };
    return { table, key };
  }
  const fixed = {
    "bulk/get": { POST: dpRoutes.bulkGet },
    bulk: { PUT: dpRoutes.bulkPut },
    "bulk/delete": { POST: dpRoutes.bulkDelete },
    keys: { GET: dpRoutes.list },
  }[rest];
  return fixed ? { table: fixed } : null;
}

// A Workers Rate Limiting binding's name: upper-case, as the stack config declares it, never a KV binding.
const DP_RATE_LIMITER_NAME = /^[A-Z][A-Z0-9_]{0,63}$/;

function isRateLimiter(binding) {
  return binding !== null && typeof binding === "object" && typeof binding.limit === "function";
}

// POST /ratelimit/{B} {"key": "..."}: one env[B].limit({key}); result {"success": bool}. The binding counts per
// Cloudflare location and is eventually consistent (a permissive limiter), and says nothing of when it reopens.
async function rateLimit(request, env, name) {
  if (!DP_RATE_LIMITER_NAME.test(name) || KV_BINDINGS.includes(name) || !isRateLimiter(env[name])) {
    throw new DataPlaneError(404, DP_CODES.ratelimiter, `rate limiter not found: ${name} is not a rate limiting binding of this Worker`);
  }
  const body = await readJson(request, 4096);
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new DataPlaneError(400, DP_CODES.invalid, 'the body must be {"key": "..."}', { field: "body" });
  }
  const key = checkKey(body.key);
  const outcome = await env[name].limit({ key });
  return Response.json(envelope({ success: outcome.success === true }));
}

async function handleDataPlane(request, env) {
  const url = new URL(request.url);
  if (url.pathname === "/health") return handleHealth(request, env);
  if (!(await authorized(request, env))) {
    await drain(request);
    return unauthorized();
  }
  try {
    const limiter = /^\/ratelimit\/([^/]+)$/.exec(url.pathname);
    if (limiter) {
      if (request.method !== "POST") {
        const response = errorResponse(405, { code: DP_CODES.method, message: "use POST on this path" });
        response.headers.set("allow", "POST");
        await drain(request);
        return response;
      }
      return await rateLimit(request, env, limiter[1]);
    }
    const match = /^\/kv\/([^/]+)\/(.+)$/.exec(url.pathname);
    const found = match ? route(match[2]) : null;
    if (!found) {
      throw new DataPlaneError(404, DP_CODES.route, `no route ${request.method} ${url.pathname}; see DATAPLANE.md`);
    }
    const handler = found.table[request.method];
    if (!handler) {
      const allowed = Object.keys(found.table).join(", ");
      const response = errorResponse(405, { code: DP_CODES.method, message: `use ${allowed} on this path` });
      response.headers.set("allow", allowed);
      await drain(request);
      return response;
    }
    const binding = match[1];
    if (!KV_BINDINGS.includes(binding) || !isKv(env[binding])) {
      throw new DataPlaneError(404, DP_CODES.binding, `namespace not found: ${binding} is not one of ${KV_BINDINGS.join(", ")}`);
    }
    const kv = env[binding];
    if (found.key === undefined) return await handler(kv, request, url);
    return await handler(kv, checkKey(found.key), request, url);
  } catch (err) {
    const failure = kvFailure(err);
    await drain(request);
    return errorResponse(failure.status, { code: failure.code, message: failure.message, ...failure.extra });
  }
}

worker.fetch = handleDataPlane;

// dualcache's data-plane Worker: the KV API of infra/worker/DATAPLANE.md over the six KV bindings.
// Skeleton only; the implementation lands in the next commits.
export default {
  async fetch() {
    return new Response(JSON.stringify({ success: false, errors: [{ code: 10000, message: "not implemented" }] }), {
      status: 501,
      headers: { "content-type": "application/json" },
    });
  },
};

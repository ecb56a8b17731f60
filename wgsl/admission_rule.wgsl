// The rule-based admission of the WG-KV dual cache's policies (window, sink, random), shared by the kernels
// that store a token into the ring (wgsl/wgkv_append.wgsl, wgsl/qkv_ring_store.wgsl), which include it with
// a line `// #include admission_rule` and do not declare its overrides. The `wgkv` policy's flags come
// from the write gate instead: rule_admits() is false for it.

override policy: u32 = 0u; // 0 wgkv (gate flags), 1 window (none), 2 sink (pos < sinks), 3 random (hash)
override sinks: u32 = 0u;
override seed: u32 = 0u;
override rate_threshold: u32 = 0u; // random: admitted iff hash >> 8 < rate_threshold (rate * 2^24)

// 32-bit integer mixer; `mix32` in src/kv/wgkv_policy.ts is the same function.
fn mix32(v: u32) -> u32 {
  var x = v;
  x ^= x >> 16u;
  x *= 0x7feb352du;
  x ^= x >> 15u;
  x *= 0x846ca68bu;
  x ^= x >> 16u;
  return x;
}

// Whether the rule of the cache's policy keeps the token at position `pos` of (layer, head) beyond the
// window (false for `wgkv` and `window`).
fn rule_admits(layer: u32, head: u32, pos: u32) -> bool {
  switch (policy) {
    case 2u: { return pos < sinks; }
    case 3u: { return (mix32(mix32(mix32(mix32(seed) ^ layer) ^ head) ^ pos) >> 8u) < rate_threshold; }
    default: { return false; }
  }
}

// The queries and probabilities of wgsl/flash_prefill.wgsl in workgroup memory as packed f16 pairs (spliced
// in there at STAGING): half the workgroup memory of wgsl/prefill_staging_f32.wgsl, so larger tiles fit. q_tile
// holds a row's 4 scaled query values per vec2u, probs the 4 rows of a quad per vec2u. The probabilities are
// rounded to f16 before the row sums add them up, so the sums weigh what P·V multiplies.

var<workgroup> q_tile: array<vec2u, TILE_ROWS * head_dim / 4u>;
var<workgroup> probs: array<vec2u, TILE_KEYS * QUADS>;

fn pack4(v: vec4f) -> vec2u {
  return vec2u(pack2x16float(v.xy), pack2x16float(v.zw));
}

fn unpack4(w: vec2u) -> vec4f {
  return vec4f(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn put_q(at: u32, value: vec4f) {
  q_tile[at] = pack4(value);
}

fn get_q(at: u32) -> vec4f {
  return unpack4(q_tile[at]);
}

// The probabilities as stored (rounded to f16).
fn stored_p(p: vec4f) -> vec4f {
  return unpack4(pack4(p));
}

fn put_p(at: u32, p: vec4f) {
  probs[at] = pack4(p);
}

fn get_p(at: u32) -> vec4f {
  return unpack4(probs[at]);
}

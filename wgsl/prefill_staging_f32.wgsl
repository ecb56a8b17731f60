// The queries and probabilities of wgsl/flash_prefill.wgsl in workgroup memory as f32 (spliced in there at
// STAGING): q_tile holds a row's 4 scaled query values per vec4f, probs the 4 rows of a quad per vec4f.

var<workgroup> q_tile: array<vec4f, TILE_ROWS * head_dim / 4u>;
var<workgroup> probs: array<vec4f, TILE_KEYS * QUADS>;

fn put_q(at: u32, value: vec4f) {
  q_tile[at] = value;
}

fn get_q(at: u32) -> vec4f {
  return q_tile[at];
}

// The probabilities as stored (f32: unchanged).
fn stored_p(p: vec4f) -> vec4f {
  return p;
}

fn put_p(at: u32, p: vec4f) {
  probs[at] = p;
}

fn get_p(at: u32) -> vec4f {
  return probs[at];
}

// K and V tiles of wgsl/flash_prefill.wgsl in f32 (spliced in at KV_TILES): each value decoded once, when
// it is staged, instead of by every thread that reads it; twice the workgroup memory of the f16 tiles.
alias KWord = vec4f; // 4 values of a key
alias VWord = vec2f; // 2 values of a value row

fn put_k(at: u32, w: vec2u) {
  k_tile[at] = vec4f(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn get_k(at: u32) -> vec4f {
  return k_tile[at];
}

fn put_v(at: u32, w: u32) {
  v_tile[at] = unpack2x16float(w);
}

fn get_v(at: u32) -> vec2f {
  return v_tile[at];
}

// K and V tiles of wgsl/flash_prefill.wgsl as the cache stores them (included there): packed f16 pairs,
// decoded where they are read.
alias KWord = vec2u; // 4 values of a key: two packed f16 pairs
alias VWord = u32; // 2 values of a value row: one packed f16 pair

fn put_k(at: u32, w: vec2u) {
  k_tile[at] = w;
}

fn get_k(at: u32) -> vec4f {
  let w = k_tile[at];
  return vec4f(unpack2x16float(w.x), unpack2x16float(w.y));
}

fn put_v(at: u32, w: u32) {
  v_tile[at] = w;
}

fn get_v(at: u32) -> vec2f {
  return unpack2x16float(v_tile[at]);
}

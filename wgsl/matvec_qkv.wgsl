// The fused QKV decode product of wgsl/matvec_fast.wgsl's `qkv` entry, as a function several kernels call
// (that entry and wgsl/matvec_chain.wgsl's chained phase). A library, included: the including kernel
// declares the weights' units with suffixes a (Q), b (K) and c (V) (accumulate_a …), the bindings y_a, y_b,
// y_c (Q, K, V rows [m][rows_*]), k_pre, step (n_tokens, pos0), turns (the RoPE turn table), norm_sums, the
// workgroup array `partial`, the overrides rows_a/b/c, row_bytes_a/b/c, rows_per_wg, tokens_per_wg,
// norm_mode (0 or 2) and the KV_STORE block (wgsl/qkv_kv_store.wgsl or its stub), and includes
// matvec_reduce; this file declares the overrides of RoPE and the KV store below.

// RoPE of the QKV (GGUF adjacent-pair layout): values per head, rotated pairs per head (0 = no RoPE),
// parts per pair of the turn table.
override head_dim: u32 = 2u;
override rope_pairs: u32 = 0u;
override n_chunks: u32 = 1u;
// 1 to also write K before RoPE to k_pre (the write gate reads both), else 0.
override keep_pre_k: u32 = 0u;
// 1 to also store K and V into the paged KV cache (the spliced KV_STORE block), else 0. head_dim is
// then the cache's, also without RoPE.
override kv_append: u32 = 0u;

// rope_rotation(pos, pair, chunks): (cos, sin) of the angle of `pair` at position `pos`.
// #include rope_angle

// The fused QKV's work for row group g (the groups of Q, then K, then V) and the tokens t0 ..: products,
// RoPE on Q and K as they are written, K before RoPE (keep_pre_k), the KV store (kv_append). Every thread
// of the workgroup calls it (accumulate's barriers), also those of a workgroup with nothing to do.
fn qkv_rows(g: u32, t0: u32, tid: u32) {
  let m = step.n_tokens;
  let groups_a = (rows_a + rows_per_wg - 1u) / rows_per_wg;
  let groups_b = (rows_b + rows_per_wg - 1u) / rows_per_wg;
  // Which weight this workgroup's rows belong to, and the first of them.
  var weight = 0u;
  var row0 = g * rows_per_wg;
  var rows = rows_a;
  if (g >= groups_a + groups_b) {
    weight = 2u;
    row0 = (g - groups_a - groups_b) * rows_per_wg;
    rows = rows_c;
  } else if (g >= groups_a) {
    weight = 1u;
    row0 = (g - groups_a) * rows_per_wg;
    rows = rows_b;
  }
  if (row0 >= rows || t0 >= m) { return; }
  let nt = min(tokens_per_wg, m - t0);

  // KV store (kv_append = 1): in a K or V workgroup, thread tid < rows_per_wg / 2 · tokens_per_wg owns the
  // f16 pair of rows (row0 + 2 · kv_pair, + 1) of token t0 + kv_token. Its page and word are looked up
  // before the products, so that the two dependent loads overlap them.
  let kv_pair = tid / tokens_per_wg;
  let kv_token = tid % tokens_per_wg;
  let kv_owner = kv_append == 1u && weight > 0u && tid < (rows_per_wg / 2u) * tokens_per_wg &&
    row0 + 2u * kv_pair < rows && kv_token < nt;
  var kv_at = vec2u(0u);
  if (kv_owner) { kv_at = kv_locate(weight, t0 + kv_token, row0 + 2u * kv_pair); }

  var acc: array<f32, MAX_ROWS * MAX_TOKENS>;
  if (weight == 0u) {
    acc = accumulate_a(row_bytes_a, row0, rows - 1u, t0, nt, tid);
  } else if (weight == 1u) {
    acc = accumulate_b(row_bytes_b, row0, rows - 1u, t0, nt, tid);
  } else {
    acc = accumulate_c(row_bytes_c, row0, rows - 1u, t0, nt, tid);
  }
  // With a folded norm, the partial sums are read after the weights' loads were issued.
  var norm_part: array<f32, MAX_TOKENS>;
  if (norm_mode == 2u) { norm_part = norm_share(t0, nt, tid); }
  // Sum r · tokens_per_wg + t is (row r, token t); with a folded norm, sum rows_per_wg · tokens_per_wg + t
  // is token t's Σ y².
  let sums = rows_per_wg * tokens_per_wg;
  let n = sums + select(0u, tokens_per_wg, norm_mode == 2u);
  // @unroll
  for (var r = 0u; r < rows_per_wg; r++) {
    // @unroll
    for (var t = 0u; t < tokens_per_wg; t++) {
      partial[tid * n + r * tokens_per_wg + t] = acc[r * MAX_TOKENS + t];
    }
  }
  if (norm_mode == 2u) {
    // @unroll
    for (var t = 0u; t < tokens_per_wg; t++) { partial[tid * n + sums + t] = norm_part[t]; }
  }
  reduce(tid, n);
  if (tid < sums) {
    let r = tid / tokens_per_wg;
    let t = tid % tokens_per_wg;
    if (row0 + r < rows && t < nt) {
      let row = row0 + r;
      let scale = select(1.0, norm_scale(partial[sums + t]), norm_mode == 2u);
      var value = partial[tid] * scale;
      let column = row % head_dim;
      if (keep_pre_k == 1u && weight == 1u) { k_pre[(t0 + t) * rows_b + row] = value; }
      if (weight < 2u && column < 2u * rope_pairs) {
        // Rows 2i and 2i + 1 of a head are a rotated pair; row0 and rows_per_wg are even, so the
        // partner's total is this workgroup's sum (r ^ 1, t).
        let other = partial[(r ^ 1u) * tokens_per_wg + t] * scale;
        let cs = rope_rotation(step.pos0 + t0 + t, column / 2u, n_chunks);
        if ((row & 1u) == 0u) {
          value = value * cs.x - other * cs.y;
        } else {
          value = other * cs.y + value * cs.x;
        }
      }
      let token = t0 + t;
      if (weight == 0u) {
        y_a[token * rows_a + row] = value;
      } else if (weight == 1u) {
        y_b[token * rows_b + row] = value;
      } else {
        y_c[token * rows_c + row] = value;
      }
      // The KV store's pairs: (row r, token t) final at partial[n + r · tokens_per_wg + t], past the sums
      // still read above.
      if (kv_append == 1u && weight > 0u) { partial[n + tid] = value; }
    }
  }
  if (kv_append == 1u && weight > 0u) {
    workgroupBarrier();
    if (kv_owner) {
      let lo = partial[n + 2u * kv_pair * tokens_per_wg + kv_token];
      let hi = partial[n + (2u * kv_pair + 1u) * tokens_per_wg + kv_token];
      kv_store(kv_at, lo, hi);
    }
  }
}

// The optional fourth phase of wgsl/matvec_chain.wgsl: the next layer's fused QKV (wgsl/matvec_qkv.wgsl's
// qkv_rows, with RoPE, K before RoPE and the KV store as the `qkv` entry of wgsl/matvec_fast.wgsl has them),
// reading the xn and Σ x² that phase d leaves. Spliced in as the chain's QKV_PHASE define by
// src/gpu/ops/matvec_chain.ts, with the includes expanded and the units of Q, K and V (suffixes a, b, c;
// their free names renamed to this phase's: xn, cols_q, int8_q, xb_q, xs_q, ups_q, ready_q) and the
// KV_STORE block (bindings 14 to 17 and 32…, see wgsl/qkv_kv_store.wgsl) filled in.
//
// binding 12: W_a, array<WORD_A>: raw rows of attn_q [rows_a][cols_q]
// binding 13: W_b, array<WORD_B>: raw rows of attn_k [rows_b][cols_q]
// binding 18: W_c, array<WORD_C>: raw rows of attn_v [rows_c][cols_q]
// binding 19: y_a, array<f32>: Q [rows_a], rotated (read_write)
// binding 20: y_b, array<f32>: K [rows_b], rotated (read_write)
// binding 21: y_c, array<f32>: V [rows_c] (read_write)
// binding 22: step, uniform Step: n_tokens (1), pos0 (the token's position)
// binding 23: turns, array<f32>: the RoPE turn table of src/gpu/ops/rope.ts
// binding 24: k_pre, array<f32>: K before RoPE (keep_pre_k = 1, read_write; a dummy otherwise)

struct Step {
  n_tokens: u32,
  pos0: u32,
}

override cols_q: u32 = 256u;
override rows_a: u32 = 1u;
override rows_b: u32 = 1u;
override rows_c: u32 = 1u;
override row_bytes_a: u32 = 144u;
override row_bytes_b: u32 = 144u;
override row_bytes_c: u32 = 144u;
override ups_q: u32 = 1u;
override int8_q: u32 = 0u;
// The phase reads a folded norm (phase d's partial sums).
const norm_mode = 2u;

@group(0) @binding(12) var<storage, read> W_a: array<{{WORD_A}}>;
@group(0) @binding(13) var<storage, read> W_b: array<{{WORD_B}}>;
@group(0) @binding(18) var<storage, read> W_c: array<{{WORD_C}}>;
@group(0) @binding(19) var<storage, read_write> y_a: array<f32>;
@group(0) @binding(20) var<storage, read_write> y_b: array<f32>;
@group(0) @binding(21) var<storage, read_write> y_c: array<f32>;
@group(0) @binding(22) var<uniform> step: Step;
@group(0) @binding(23) var<storage, read> turns: array<f32>;
@group(0) @binding(24) var<storage, read_write> k_pre: array<f32>;

var<workgroup> xb_q: array<vec4u, max(1u, int8_q * (cols_q / 16u))>;
var<workgroup> xs_q: array<vec2f, max(1u, int8_q * (cols_q / 16u))>;

{{UNITS_A}}
{{UNITS_B}}
{{UNITS_C}}

{{KV_STORE}}

// #include matvec_qkv

// Row groups of Q, K and V together.
fn groups_q() -> u32 {
  return (rows_a + rows_per_wg - 1u) / rows_per_wg + (rows_b + rows_per_wg - 1u) / rows_per_wg +
    (rows_c + rows_per_wg - 1u) / rows_per_wg;
}

// The phase waits for all of phase d (its xn and partial sums).
fn ready_q(tid: u32) {
  wait_for(3u, groups_d(), tid);
}

fn qkv_phase(w: u32, tid: u32) {
  qkv_rows(w, 0u, tid);
}

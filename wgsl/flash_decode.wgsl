// Split-K flash decoding: one query token per query head attends to every key of its KV head, read
// through the block table. Entry `main` computes partial results over a range of pages; entry `reduce`
// merges them with log-sum-exp rescaling.
//
// binding 0: step, uniform { n_tokens, pos0 }: pos0 is the query's position (read in WG-KV mode only; a
//            placeholder is bound otherwise)
// binding 1: sequence, uniform { slot } (the KV cache's sequence selector); the query is the row's last token
// binding 2: layer_params, uniform { layer }
// binding 3: q, f32[q_heads * head_dim] (read), the query after RoPE
// binding 4: partials, f32[splits][q_heads][2 + head_dim]: running max, sum of weights, weighted V sum
// binding 5: out, f32[q_heads * head_dim] (write, by `reduce`)
// binding 6: block_table, u32[seq_slots][layers][kv_heads][max_pages] (read)
// binding 7: lengths, u32[seq_slots][layers][kv_heads] (read), including the current token
// binding 8…: pool shards (read), see the generated block below.
// binding 16: slot_info, u32[seq_slots][layers][kv_heads][ring_tokens] (read), WG-KV mode only (a placeholder
//            is bound otherwise): position * 2 + admitted of the token in each ring slot of the dual cache.
//
// WG-KV mode (wgkv_window > 0): the row is a dual cache, ring slots [0, ring_tokens) then global tokens; a
// ring key at position p is seen iff p <= q and (q - p < wgkv_window or it was admitted), every global key
// is seen. A split whose keys are all masked contributes a zero sum (weights of masked keys are 0).
//
// Splits: the grid is fixed at (splits, kv_heads) so the same commands replay every token; each row's
// n pages are cut into `splits` ranges of ceil(n / splits) pages, computed from its length on the GPU, so
// ragged heads balance themselves and splits without pages exit at once. One workgroup serves all
// `group` query heads of its KV head, so each K/V page is loaded once for the group.

override head_dim: u32 = 64u;
override q_heads: u32 = 1u;
override kv_heads: u32 = 1u;
override layers: u32 = 1u;
override max_pages: u32 = 1u;
override pool_pages_per_shard: u32 = 1u;
override splits: u32 = 1u;
override scale: f32 = 0.125;
override wgkv_window: u32 = 0u; // 0: plain causal cache; > 0: WG-KV dual cache with this local window
override ring_tokens: u32 = 16u; // WG-KV mode: ring slots at the start of each row

const PAGE_TOKENS: u32 = 16u;
const MAX_ACC_PER_THREAD: u32 = 32u; // group * head_dim <= 2048
const MASKED: f32 = -3.0e38;

struct Step { n_tokens: u32, pos0: u32, pad0: u32, pad1: u32 }
struct Sequence { slot: u32, pad0: u32, pad1: u32, pad2: u32 }
struct LayerParams { layer: u32, pad0: u32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> sequence: Sequence;
@group(0) @binding(2) var<uniform> layer_params: LayerParams;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read> block_table: array<u32>;
@group(0) @binding(7) var<storage, read> lengths: array<u32>;
@group(0) @binding(16) var<storage, read> slot_info: array<u32>;

{{POOL}}

var<workgroup> q_group: array<f32, (q_heads / kv_heads) * head_dim>; // scaled queries of the group
var<workgroup> k_page: array<u32, PAGE_TOKENS * head_dim / 2u>; // packed f16 pairs, token-major
var<workgroup> v_page: array<u32, PAGE_TOKENS * head_dim / 2u>;
var<workgroup> weights: array<f32, (q_heads / kv_heads) * PAGE_TOKENS>; // scores, then exp weights
var<workgroup> run_max: array<f32, q_heads / kv_heads>;
var<workgroup> run_sum: array<f32, q_heads / kv_heads>;
var<workgroup> rescale: array<f32, q_heads / kv_heads>;
var<workgroup> row_length: u32;

// Whether the query sees the key of logical index k_index of row `row` (WG-KV mask; always in plain mode).
fn key_visible(row: u32, k_index: u32) -> bool {
  if (wgkv_window == 0u || k_index >= ring_tokens) { return true; }
  let info = slot_info[row * ring_tokens + k_index];
  let k_pos = info >> 1u;
  let q_pos = step.pos0;
  return k_pos <= q_pos && (q_pos - k_pos < wgkv_window || (info & 1u) == 1u);
}

// Pages [first, end) of split `split` for a row of `len` tokens (first >= end when it has none).
fn split_range(split: u32, len: u32) -> vec2u {
  let n_pages = (len + PAGE_TOKENS - 1u) / PAGE_TOKENS;
  let per = (n_pages + splits - 1u) / splits;
  return vec2u(split * per, min(split * per + per, n_pages));
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let split = wg.x;
  let kv_head = wg.y;
  let group = q_heads / kv_heads;
  let row = (sequence.slot * layers + layer_params.layer) * kv_heads + kv_head;
  if (tid == 0u) { row_length = lengths[row]; }
  let len = workgroupUniformLoad(&row_length);
  let range = split_range(split, len);
  if (range.x >= range.y) { return; }
  let half_dim = head_dim / 2u;

  for (var i = tid; i < group * head_dim; i += 64u) {
    q_group[i] = q[kv_head * group * head_dim + i] * scale;
  }
  if (tid < group) {
    run_max[tid] = MASKED;
    run_sum[tid] = 0.0;
  }
  var acc: array<f32, MAX_ACC_PER_THREAD>;
  let acc_count = (group * head_dim + 63u) / 64u;
  for (var c = 0u; c < acc_count; c++) { acc[c] = 0.0; }

  for (var j = range.x; j < range.y; j++) {
    let page = block_table[row * max_pages + j];
    let valid = min(PAGE_TOKENS, len - j * PAGE_TOKENS);
    workgroupBarrier(); // the previous page is no longer read
    for (var w = tid; w < PAGE_TOKENS * half_dim; w += 64u) {
      k_page[w] = pool_load(page, w);
      v_page[w] = pool_load(page, PAGE_TOKENS * half_dim + w);
    }
    workgroupBarrier();
    for (var e = tid; e < group * PAGE_TOKENS; e += 64u) {
      let g = e / PAGE_TOKENS;
      let t = e % PAGE_TOKENS;
      var s = MASKED;
      if (t < valid && key_visible(row, j * PAGE_TOKENS + t)) {
        var dot_sum = 0.0;
        for (var p = 0u; p < half_dim; p++) {
          let kv = unpack2x16float(k_page[t * half_dim + p]);
          dot_sum += kv.x * q_group[g * head_dim + 2u * p] + kv.y * q_group[g * head_dim + 2u * p + 1u];
        }
        s = dot_sum;
      }
      weights[e] = s;
    }
    workgroupBarrier();
    if (tid < group) {
      var page_max = MASKED;
      for (var t = 0u; t < valid; t++) { page_max = max(page_max, weights[tid * PAGE_TOKENS + t]); }
      let m_new = max(run_max[tid], page_max);
      var sum = 0.0;
      for (var t = 0u; t < valid; t++) {
        let w = weights[tid * PAGE_TOKENS + t];
        let p = select(0.0, exp(w - m_new), w > MASKED);
        weights[tid * PAGE_TOKENS + t] = p;
        sum += p;
      }
      let alpha = exp(run_max[tid] - m_new);
      rescale[tid] = alpha;
      run_sum[tid] = run_sum[tid] * alpha + sum;
      run_max[tid] = m_new;
    }
    workgroupBarrier();
    for (var c = 0u; c < acc_count; c++) {
      let e = tid + 64u * c;
      if (e < group * head_dim) {
        let g = e / head_dim;
        let d = e % head_dim;
        var a = acc[c] * rescale[g];
        for (var t = 0u; t < valid; t++) {
          let v = unpack2x16float(v_page[t * half_dim + d / 2u]);
          a += weights[g * PAGE_TOKENS + t] * select(v.x, v.y, (d & 1u) == 1u);
        }
        acc[c] = a;
      }
    }
  }

  workgroupBarrier();
  let width = 2u + head_dim;
  for (var c = 0u; c < acc_count; c++) {
    let e = tid + 64u * c;
    if (e < group * head_dim) {
      let g = e / head_dim;
      partials[(split * q_heads + kv_head * group + g) * width + 2u + e % head_dim] = acc[c];
    }
  }
  if (tid < group) {
    let o = (split * q_heads + kv_head * group + tid) * width;
    partials[o] = run_max[tid];
    partials[o + 1u] = run_sum[tid];
  }
}

// Grid: (q_heads). Merges the splits that had pages for the query head's KV head.
@compute @workgroup_size(64)
fn reduce(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let head = wg.x;
  let kv_head = head / (q_heads / kv_heads);
  let len = lengths[(sequence.slot * layers + layer_params.layer) * kv_heads + kv_head];
  let width = 2u + head_dim;
  var used_splits = 0u;
  for (var s = 0u; s < splits; s++) {
    let r = split_range(s, len);
    if (r.x < r.y) { used_splits = s + 1u; }
  }
  var m = MASKED;
  for (var s = 0u; s < used_splits; s++) { m = max(m, partials[(s * q_heads + head) * width]); }
  var total = 0.0;
  for (var s = 0u; s < used_splits; s++) {
    let o = (s * q_heads + head) * width;
    total += partials[o + 1u] * exp(partials[o] - m);
  }
  let inv = select(0.0, 1.0 / total, total > 0.0);
  for (var d = tid; d < head_dim; d += 64u) {
    var a = 0.0;
    for (var s = 0u; s < used_splits; s++) {
      let o = (s * q_heads + head) * width;
      a += partials[o + 2u + d] * exp(partials[o] - m);
    }
    out[head * head_dim + d] = a * inv;
  }
}

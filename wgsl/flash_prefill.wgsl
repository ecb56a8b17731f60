// Flash attention for prefill: the n_tokens queries of this step attend to the keys of their KV head read
// through the block table (earlier turns and the tokens just appended), with an online softmax
// (running max and sum per query row) and f32 accumulation. GQA: query head h reads KV head h / group.
// Query token i of the step has logical index lengths[row] - n_tokens + i; key_visible() decides the mask.
//
// binding 0: step, uniform { n_tokens, pos0 } (the op convention's shared StepParams)
// binding 1: sequence, uniform { slot } (the KV cache's sequence selector)
// binding 2: layer_params, uniform { layer }
// binding 3: q, f32[n_tokens][q_heads * head_dim] (read), queries after RoPE
// binding 4: out, f32[n_tokens][q_heads * head_dim] (write)
// binding 5: block_table, u32[seq_slots][layers][kv_heads][max_pages] (read)
// binding 6: lengths, u32[seq_slots][layers][kv_heads] (read), including the new tokens
// binding 7…: pool shards (read) as vec4<u32>, see the generated block below.
// binding 16: slot_info, u32[seq_slots][layers][kv_heads][ring_tokens] (read), WG-KV mode only (a placeholder
//            is bound otherwise): position * 2 + admitted of the token in each ring slot of the dual cache.
//
// WG-KV mode (wgkv_window > 0): the row is a dual cache, ring slots [0, ring_tokens) then global tokens.
// The query at position pos0 + i sees a ring key at position p iff p <= q and (q - p < wgkv_window or the
// key was admitted), and every global key (all admitted, all older than the step). The mask is exact per
// query row, so chunked prefill and decode follow the training rule.
//
// Grid: (ceil(max_tokens / tile_tokens), kv_heads); tiles past n_tokens exit at once. A workgroup takes
// tile_tokens query tokens × all `group` query heads of one KV head: tile_rows score rows, row r = token
// r / group, head r % group, so each K/V tile read from the pool serves every head of the GQA group. It
// walks the keys tile_keys at a time (whole pages); per key tile:
//   1. K and V (packed f16 pairs) are staged in workgroup memory,
//   2. scores S = Q·Kᵀ: thread (rb, lane) owns the row_block rows from rb·row_block × keys lane + 16·k
//      (a register block: each K value read from workgroup memory serves row_block rows),
//   3. softmax statistics: thread r < tile_rows owns row r's running max and sum (in registers) and turns
//      the row's scores into probabilities, publishing the rescale factor alpha,
//   4. O = alpha·O + P·V: thread (rb, lane) owns the same rows × value pairs lane + 16·k.
// Every thread count and trip count is an override, so the loops unroll and the blocks live in registers.

override head_dim: u32 = 64u; // a multiple of 8
override q_heads: u32 = 1u;
override kv_heads: u32 = 1u;
override layers: u32 = 1u;
override max_pages: u32 = 1u;
override pool_pages_per_shard: u32 = 1u;
override scale: f32 = 0.125;
override wgkv_window: u32 = 0u; // 0: plain causal cache; > 0: WG-KV dual cache with this local window
override ring_tokens: u32 = 16u; // WG-KV mode: ring slots at the start of each row
override group: u32 = 1u; // query heads per KV head
override tile_rows: u32 = 32u; // score rows per workgroup: 16, 32 or 64
override tile_tokens: u32 = 32u; // query tokens per workgroup: floor(tile_rows / group)
override tile_keys: u32 = 32u; // keys per tile: 16, 32, 48 or 64 (whole pages)
override pv_pairs: u32 = 2u; // value pairs per thread: ceil(head_dim / 32)
override row_block: u32 = 4u; // rows per thread: 4 or 8
override threads: u32 = 128u; // tile_rows / row_block row blocks × 16 lanes

const PAGE_TOKENS: u32 = 16u;
const LANES: u32 = 16u;
const MAX_KEYS_PER_LANE: u32 = 4u; // tile_keys <= 64
const MAX_PV_PAIRS: u32 = 8u; // head_dim <= 256
const MAX_ROW_BLOCK: u32 = 8u;
const MASKED: f32 = -3.0e38;

struct Step { n_tokens: u32, pos0: u32, pad0: u32, pad1: u32 }
struct Sequence { slot: u32, pad0: u32, pad1: u32, pad2: u32 }
struct LayerParams { layer: u32, pad0: u32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> sequence: Sequence;
@group(0) @binding(2) var<uniform> layer_params: LayerParams;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read> block_table: array<u32>;
@group(0) @binding(6) var<storage, read> lengths: array<u32>;
@group(0) @binding(16) var<storage, read> slot_info: array<u32>;

{{POOL}}

// Scaled queries, [tile_rows][head_dim / 4] vec4s.
var<workgroup> q_tile: array<vec4f, tile_rows * head_dim / 4u>;
// Keys, [tile_keys][head_dim / 4 + 1] pairs of packed f16 pairs (4 values); the extra column staggers the
// rows over the memory banks, since lanes of a warp read different keys at the same column.
var<workgroup> k_tile: array<vec2u, tile_keys * (head_dim / 4u + 1u)>;
// Values, [tile_keys][head_dim / 2] packed f16 pairs.
var<workgroup> v_tile: array<u32, tile_keys * head_dim / 2u>;
// Scores then probabilities, [tile_keys][tile_rows / 4] vec4s (4 consecutive rows); MASKED where hidden.
var<workgroup> scores: array<vec4f, tile_keys * tile_rows / 4u>;
// Per row: the rescale factor of the current key tile, then the final softmax sum.
var<workgroup> row_stat: array<vec4f, tile_rows / 4u>;
var<workgroup> row_length: u32;
// WG-KV mode, ring tiles: per key whether some query of the tile may see it, then whether any key may.
var<workgroup> key_live: array<u32, tile_keys>;
var<workgroup> tile_live: u32;

// Which keys a query row sees, by logical index in its (slot, layer, head) row `row`: causal for the full
// cache; in WG-KV mode by the query's position `q_pos` and the ring slot's position and flag.
fn key_visible(q_index: u32, k_index: u32, row: u32, q_pos: u32) -> bool {
  if (wgkv_window == 0u) { return k_index <= q_index; }
  if (k_index >= ring_tokens) { return true; }
  let info = slot_info[row * ring_tokens + k_index];
  let k_pos = info >> 1u;
  return k_pos <= q_pos && (q_pos - k_pos < wgkv_window || (info & 1u) == 1u);
}

// WG-KV mode: whether ring slot `k_index` of row `row` may be visible to some query at a position in
// [first_pos, last_pos]: an admitted key to any query at or after it, any other to the first such query
// if that is still within the window. Conservative for key_visible() over the range, so a ring tile with
// no live key is entirely masked for the query tile and may be skipped.
fn ring_key_live(k_index: u32, row: u32, first_pos: u32, last_pos: u32) -> bool {
  let info = slot_info[row * ring_tokens + k_index];
  let k_pos = info >> 1u;
  return k_pos <= last_pos && ((info & 1u) == 1u || max(first_pos, k_pos) - k_pos < wgkv_window);
}

@compute @workgroup_size(threads)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let kv_head = wg.y;
  let row = (sequence.slot * layers + layer_params.layer) * kv_heads + kv_head;
  if (tid == 0u) { row_length = lengths[row]; }
  let len = workgroupUniformLoad(&row_length);
  let n_tokens = step.n_tokens;
  let token0 = wg.x * tile_tokens;
  if (token0 >= n_tokens || len < n_tokens) { return; }
  let base = len - n_tokens;
  let half_dim = head_dim / 2u;
  let quads = head_dim / 4u;
  let octets = head_dim / 8u; // 16-byte words per key in the pool
  let k_stride = quads + 1u;
  let blocks = tile_rows / 4u; // vec4s of rows per key in `scores`
  let row_quads = row_block / 4u; // vec4s of rows per thread
  let stride = q_heads * head_dim;
  let tokens_here = min(tile_tokens, n_tokens - token0);
  let first_head = kv_head * group;

  // Stage the scaled queries; rows past the tile's tokens are zero (and masked below).
  for (var i = tid; i < tile_rows * quads; i += threads) {
    let r = i / quads;
    let t = r / group;
    var value = vec4f(0.0);
    if (t < tokens_here) {
      let o = (token0 + t) * stride + (first_head + r % group) * head_dim + 4u * (i % quads);
      value = vec4f(q[o], q[o + 1u], q[o + 2u], q[o + 3u]) * scale;
    }
    q_tile[i] = value;
  }

  let rb = tid / LANES;
  let lane = tid % LANES;
  let keys_per_lane = tile_keys / LANES;
  let first_q = base + token0;
  let last_q = base + token0 + tokens_here - 1u;
  let key_end = select(last_q + 1u, len, wgkv_window > 0u);
  let key_tiles = (key_end + tile_keys - 1u) / tile_keys;

  var m = MASKED; // running max of row tid (threads tid < tile_rows)
  var l = 0.0; // running sum of row tid
  var acc: array<vec2f, MAX_ROW_BLOCK * MAX_PV_PAIRS>; // [row i][pair k] at i * MAX_PV_PAIRS + k
  for (var k = 0u; k < MAX_ROW_BLOCK * MAX_PV_PAIRS; k++) { acc[k] = vec2f(0.0); }

  for (var j = 0u; j < key_tiles; j++) {
    let key0 = j * tile_keys;
    workgroupBarrier(); // the previous tile's K, V and probabilities are no longer read
    if (wgkv_window > 0u && key0 < ring_tokens) {
      // A ring tile: skip it when no query of the tile sees any of its keys (future or expired slots).
      let first_pos = step.pos0 + token0;
      for (var t = tid; t < tile_keys; t += threads) {
        let key = key0 + t;
        let live = key < len &&
          (key >= ring_tokens || ring_key_live(key, row, first_pos, first_pos + tokens_here - 1u));
        key_live[t] = select(0u, 1u, live);
      }
      workgroupBarrier();
      if (tid == 0u) {
        var any = 0u;
        for (var t = 0u; t < tile_keys; t++) { any |= key_live[t]; }
        tile_live = any;
      }
      if (workgroupUniformLoad(&tile_live) == 0u) { continue; }
    }

    // 1. Stage K and V, 16-byte loads (8 values); keys past the row's length read as zero.
    for (var w = tid; w < tile_keys * octets; w += threads) {
      let t = w / octets;
      let c = w % octets;
      let key = key0 + t;
      var k8 = vec4u(0u);
      var v8 = vec4u(0u);
      if (key < len) {
        let page = block_table[row * max_pages + key / PAGE_TOKENS];
        let quad = (key % PAGE_TOKENS) * octets + c;
        k8 = pool_load4(page, quad);
        v8 = pool_load4(page, PAGE_TOKENS * octets + quad);
      }
      k_tile[t * k_stride + 2u * c] = k8.xy;
      k_tile[t * k_stride + 2u * c + 1u] = k8.zw;
      let v_at = t * half_dim + 4u * c;
      v_tile[v_at] = v8.x;
      v_tile[v_at + 1u] = v8.y;
      v_tile[v_at + 2u] = v8.z;
      v_tile[v_at + 3u] = v8.w;
    }
    workgroupBarrier();

    // 2. Scores of rows rb·row_block + i × keys lane + 16·k.
    var s: array<f32, MAX_ROW_BLOCK * MAX_KEYS_PER_LANE>; // [row i][key k] at i * MAX_KEYS_PER_LANE + k
    for (var k = 0u; k < MAX_ROW_BLOCK * MAX_KEYS_PER_LANE; k++) { s[k] = 0.0; }
    for (var c = 0u; c < quads; c++) {
      var keys: array<vec4f, MAX_KEYS_PER_LANE>;
      for (var k = 0u; k < keys_per_lane; k++) {
        let packed = k_tile[(lane + LANES * k) * k_stride + c];
        keys[k] = vec4f(unpack2x16float(packed.x), unpack2x16float(packed.y));
      }
      for (var i = 0u; i < row_block; i++) {
        let qv = q_tile[(row_block * rb + i) * quads + c];
        for (var k = 0u; k < keys_per_lane; k++) {
          s[i * MAX_KEYS_PER_LANE + k] += dot(qv, keys[k]);
        }
      }
    }
    for (var k = 0u; k < keys_per_lane; k++) {
      let t = lane + LANES * k;
      let key = key0 + t;
      for (var b = 0u; b < row_quads; b++) {
        var block = vec4f(MASKED);
        for (var e = 0u; e < 4u; e++) {
          let i = 4u * b + e;
          let token = (row_block * rb + i) / group;
          if (token < tokens_here && key < len &&
            key_visible(first_q + token, key, row, step.pos0 + token0 + token)) {
            block[e] = s[i * MAX_KEYS_PER_LANE + k];
          }
        }
        scores[t * blocks + row_quads * rb + b] = block;
      }
    }
    workgroupBarrier();

    // 3. Online softmax: thread r turns row r's scores into probabilities and publishes the rescale factor.
    if (tid < tile_rows) {
      let at = tid / 4u;
      let component = tid % 4u;
      var tile_max = MASKED;
      for (var t = 0u; t < tile_keys; t++) { tile_max = max(tile_max, scores[t * blocks + at][component]); }
      var alpha = 1.0;
      if (tile_max > MASKED) {
        let m_new = max(m, tile_max);
        alpha = exp(m - m_new);
        var sum = 0.0;
        for (var t = 0u; t < tile_keys; t++) {
          let p = exp(scores[t * blocks + at][component] - m_new);
          scores[t * blocks + at][component] = p;
          sum += p;
        }
        l = l * alpha + sum;
        m = m_new;
      } else {
        for (var t = 0u; t < tile_keys; t++) { scores[t * blocks + at][component] = 0.0; }
      }
      row_stat[at][component] = alpha;
    }
    workgroupBarrier();

    // 4. O = alpha·O + P·V for rows rb·row_block + i × value pairs lane + 16·k.
    for (var i = 0u; i < row_block; i++) {
      let alpha = row_stat[row_quads * rb + i / 4u][i % 4u];
      for (var k = 0u; k < pv_pairs; k++) { acc[i * MAX_PV_PAIRS + k] *= alpha; }
    }
    let keys_here = min(tile_keys, len - key0);
    for (var t = 0u; t < keys_here; t++) {
      var p: array<vec4f, MAX_ROW_BLOCK / 4u>;
      for (var b = 0u; b < row_quads; b++) { p[b] = scores[t * blocks + row_quads * rb + b]; }
      for (var k = 0u; k < pv_pairs; k++) {
        let pair = lane + LANES * k;
        if (pair < half_dim) {
          let v = unpack2x16float(v_tile[t * half_dim + pair]);
          for (var i = 0u; i < row_block; i++) { acc[i * MAX_PV_PAIRS + k] += p[i / 4u][i % 4u] * v; }
        }
      }
    }
  }

  workgroupBarrier(); // every thread has read its last rescale factors
  if (tid < tile_rows) { row_stat[tid / 4u][tid % 4u] = l; }
  workgroupBarrier();
  for (var i = 0u; i < row_block; i++) {
    let r = row_block * rb + i;
    let sum = row_stat[r / 4u][r % 4u];
    let token = r / group;
    if (token < tokens_here) {
      let inv = select(0.0, 1.0 / sum, sum > 0.0);
      let o = (token0 + token) * stride + (first_head + r % group) * head_dim;
      for (var k = 0u; k < pv_pairs; k++) {
        let pair = lane + LANES * k;
        if (pair < half_dim) {
          out[o + 2u * pair] = acc[i * MAX_PV_PAIRS + k].x * inv;
          out[o + 2u * pair + 1u] = acc[i * MAX_PV_PAIRS + k].y * inv;
        }
      }
    }
  }
}

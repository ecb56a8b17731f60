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
// binding 32…: pool shards (read) as vec4<u32>, see the generated block below.
// binding 16: slot_info, u32[seq_slots][layers][kv_heads][ring_tokens] (read), WG-KV mode only (a placeholder
//            is bound otherwise): position * 2 + admitted of the token in each ring slot of the dual cache.
// binding 17: partials, f32 (written by `main` when splits > 1): unnormalised outputs
//             [SLOTS][max_tokens][group][head_dim], then (running max, sum of weights) [SLOTS][max_tokens][group][2]
// binding 18: partials again (read, by `reduce`)
//
// WG-KV mode (wgkv_window > 0): the row is a dual cache, ring slots [0, ring_tokens) then global tokens.
// The query at position pos0 + i sees a ring key at position p iff p <= q and (q - p < wgkv_window or the
// key was admitted), and every global key (all admitted, all older than the step). The mask is exact per
// query row, so chunked prefill and decode follow the training rule.
//
// Grid: (ceil(max_tokens / TILE_TOKENS), kv_heads), taken in reverse so the longest (last) query tiles of a
// causal prefill start first; tiles past n_tokens exit at once. A workgroup takes TILE_TOKENS query tokens ×
// all `group` query heads of one KV head: TILE_ROWS score rows, row r = token r / group, head r % group, so
// each K/V tile read from the pool serves every head of the GQA group. Its 2 · TILE_ROWS threads form
// TILE_ROWS / 4 row quads of 8 threads: thread (quad, lane) owns rows 4·quad + 0..3 throughout, the keys
// lane + 8·j of each key tile (for the scores) and the value pairs lane + 8·j (for the output). Per key tile
// of TILE_KEYS keys (whole pages):
//   1. K and V (packed f16 pairs) are staged in workgroup memory with 16-byte loads,
//   2. scores: a 4 × KEYS_PER_LANE register block per thread (each K value read feeds 4 rows, each Q value
//      KEYS_PER_LANE keys), masked only on tiles that cross the causal diagonal, the row end or the ring,
//   3. softmax: the 8 lanes of a quad publish their rows' maxima, each lane rescales its own running sum
//      and output block by the same factor and writes its probabilities,
//   4. O += P·V from the probabilities of all the tile's keys.
// Four barriers per key tile; the row sums of the 8 lanes are added once at the end.
//
// Key splits (splits > 1): the grid's y is SLOTS = splits · kv_heads slots, shared out among the KV heads
// in proportion to their lengths (wgsl/slot_plan.wgsl), and a head's slots split each query tile's key
// tiles into ranges of whole tiles. Each workgroup then writes its rows' unnormalised outputs with their
// running max and sum to `partials`, and entry `reduce` merges a head's slots per (token, query head). This
// keeps WG-KV heads of very different lengths from leaving most of the GPU idle while the longest finishes,
// and gives long rows more workgroups.

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
override splits: u32 = 1u; // key splits per KV head on average (1: `out` is written directly)
override max_tokens: u32 = 1u; // query tokens the partials have room for (splits > 1)
// 1: the rows' maxima over a quad's 8 lanes by subgroup shuffles (shuffle_xor, from the text define
// SHUFFLE: wgsl/shuffle_xor.wgsl, or its emulation through workgroup memory for GPUs without subgroups),
// one barrier per key tile fewer; 0: through workgroup memory (lane_stat).
override subgroup_max: u32 = 0u;

// The tiling, spliced in as constants so every register block has a fixed size:
// TILE_ROWS (16, 32 or 64), TILE_TOKENS (= floor(TILE_ROWS / group)), TILE_KEYS (16, 32, 48 or 64),
// KEYS_PER_LANE (= TILE_KEYS / 8), PAIRS_PER_LANE (= ceil(head_dim / 16)), THREADS (= 2 · TILE_ROWS).
{{TILING}}

const PAGE_TOKENS: u32 = 16u;
const LANES: u32 = 8u; // threads per row quad
const QUADS: u32 = TILE_ROWS / 4u;
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
@group(0) @binding(17) var<storage, read_write> partials: array<f32>;
@group(0) @binding(18) var<storage, read> partials_in: array<f32>;

const SLOTS: u32 = splits * kv_heads;

// #include slot_plan

{{POOL}}

// Scaled queries q_tile, [TILE_ROWS][head_dim / 4] words of 4 values, and the probabilities `probs`,
// [TILE_KEYS][QUADS] words of the 4 rows of a quad, 0 where hidden: f32 or packed f16 pairs, with put_q/get_q,
// put_p/get_p and stored_p from the text define STAGING (wgsl/prefill_staging_f32.wgsl or _f16.wgsl).
{{STAGING}}
// Keys, [TILE_KEYS][head_dim / 4 + 1] words of 4 values (KWord: vec2u of packed f16 pairs); the extra word
// staggers the keys over the memory banks, since the 8 lanes of a quad read 8 different keys at the same
// column. Values, [TILE_KEYS][head_dim / 2] words of 2 values (VWord: u32 of a packed f16 pair). KWord,
// VWord and put_k/get_k/put_v/get_v come from wgsl/kv_tiles_f16.wgsl.
// #include kv_tiles_f16
var<workgroup> k_tile: array<KWord, TILE_KEYS * (head_dim / 4u + 1u)>;
var<workgroup> v_tile: array<VWord, TILE_KEYS * head_dim / 2u>;
// Per row and lane: the lane's maximum over its keys of the tile, then (at the end) its running sum.
var<workgroup> lane_stat: array<f32, TILE_ROWS * LANES>;
var<workgroup> row_length: u32;
// WG-KV mode, ring tiles: per key whether some query of the tile may see it, then whether any key may.
var<workgroup> key_live: array<u32, TILE_KEYS>;
var<workgroup> tile_live: u32;
// Key splits: (kv head, index of this slot among the head's, the head's slot count).
var<workgroup> split_plan: vec3u;

// The workgroup the emulated shuffles exchange through.
const SHUFFLE_THREADS: u32 = THREADS;

{{SHUFFLE}}

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

@compute @workgroup_size(THREADS)
fn main(
  @builtin(workgroup_id) wg: vec3u,
  @builtin(num_workgroups) grid: vec3u,
  @builtin(local_invocation_index) tid: u32,
) {
  let base_row = (sequence.slot * layers + layer_params.layer) * kv_heads;
  var kv_head = wg.y;
  var split = vec2u(0u, 1u); // (this slot's index among its head's, the head's slot count)
  if (splits > 1u) {
    stage_head_lengths(base_row, tid, THREADS);
    if (tid == 0u) {
      let plan = plan_slots(0u, wg.y);
      split_plan = vec3u(plan.owner, wg.y - plan.owner_first, plan.owner_count);
    }
    let plan = workgroupUniformLoad(&split_plan);
    if (plan.z == 0u) { return; } // no head has keys
    kv_head = plan.x;
    split = plan.yz;
  }
  let row = base_row + kv_head;
  if (tid == 0u) { row_length = lengths[row]; }
  let len = workgroupUniformLoad(&row_length);
  let n_tokens = step.n_tokens;
  let token0 = (grid.x - 1u - wg.x) * TILE_TOKENS;
  if (token0 >= n_tokens || len < n_tokens) { return; }
  let base = len - n_tokens;
  let half_dim = head_dim / 2u;
  let quads = head_dim / 4u;
  let octets = head_dim / 8u; // 16-byte words per key in the pool
  let k_stride = quads + 1u;
  let stride = q_heads * head_dim;
  let tokens_here = min(TILE_TOKENS, n_tokens - token0);
  let first_head = kv_head * group;

  // Stage the scaled queries; rows past the tile's tokens are zero (and masked below).
  for (var i = tid; i < TILE_ROWS * quads; i += THREADS) {
    let r = i / quads;
    let t = r / group;
    var value = vec4f(0.0);
    if (t < tokens_here) {
      let o = (token0 + t) * stride + (first_head + r % group) * head_dim + 4u * (i % quads);
      value = vec4f(q[o], q[o + 1u], q[o + 2u], q[o + 3u]) * scale;
    }
    put_q(i, value);
  }

  let quad = tid / LANES;
  let lane = tid % LANES;
  let row0 = 4u * quad; // this thread's first score row
  let first_q = base + token0;
  let last_q = base + token0 + tokens_here - 1u;
  let first_pos = step.pos0 + token0;
  let key_end = select(last_q + 1u, len, wgkv_window > 0u);
  let key_tiles = (key_end + TILE_KEYS - 1u) / TILE_KEYS;
  // This slot's key tiles (all of them without splits; possibly none).
  let tiles_per_split = (key_tiles + split.y - 1u) / split.y;
  let tile_begin = min(split.x * tiles_per_split, key_tiles);
  let tile_end = min(tile_begin + tiles_per_split, key_tiles);

  // Token of each of the thread's rows, TILE_TOKENS for rows past the tile (never visible).
  var row_token: array<u32, 4>;
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    let t = (row0 + i) / group;
    row_token[i] = select(TILE_TOKENS, t, t < tokens_here);
  }

  var m = vec4f(MASKED); // running max of the thread's 4 rows (the same in all 8 lanes of the quad)
  var l = vec4f(0.0); // running sum over this lane's keys
  var acc: array<array<vec2f, PAIRS_PER_LANE>, 4>; // [row i][pair j]: value pair lane + 8·j
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    // @unroll
    for (var j = 0u; j < PAIRS_PER_LANE; j++) { acc[i][j] = vec2f(0.0); }
  }

  for (var tile = tile_begin; tile < tile_end; tile++) {
    let key0 = tile * TILE_KEYS;
    workgroupBarrier(); // the previous tile's K, V and probabilities are no longer read
    let ring_tile = wgkv_window > 0u && key0 < ring_tokens;
    if (ring_tile) {
      // A ring tile: skip it when no query of the tile sees any of its keys (future or expired slots).
      for (var t = tid; t < TILE_KEYS; t += THREADS) {
        let key = key0 + t;
        let live = key < len &&
          (key >= ring_tokens || ring_key_live(key, row, first_pos, first_pos + tokens_here - 1u));
        key_live[t] = select(0u, 1u, live);
      }
      workgroupBarrier();
      if (tid == 0u) {
        var any = 0u;
        for (var t = 0u; t < TILE_KEYS; t++) { any |= key_live[t]; }
        tile_live = any;
      }
      if (workgroupUniformLoad(&tile_live) == 0u) { continue; }
    }

    // 1. Stage K and V, 16-byte loads (8 values); keys past the row's length read as zero.
    for (var w = tid; w < TILE_KEYS * octets; w += THREADS) {
      let t = w / octets;
      let c = w % octets;
      let key = key0 + t;
      var k8 = vec4u(0u);
      var v8 = vec4u(0u);
      if (key < len) {
        let page = block_table[row * max_pages + key / PAGE_TOKENS];
        let quad_at = (key % PAGE_TOKENS) * octets + c;
        let kv8 = pool_load_kv(page, quad_at);
        k8 = kv8[0];
        v8 = kv8[1];
      }
      put_k(t * k_stride + 2u * c, k8.xy);
      put_k(t * k_stride + 2u * c + 1u, k8.zw);
      let v_at = t * half_dim + 4u * c;
      put_v(v_at, v8.x);
      put_v(v_at + 1u, v8.y);
      put_v(v_at + 2u, v8.z);
      put_v(v_at + 3u, v8.w);
    }
    workgroupBarrier();

    // 2. Scores of rows row0 + i × keys lane + 8·j.
    var s: array<array<f32, KEYS_PER_LANE>, 4>;
    // @unroll
    for (var i = 0u; i < 4u; i++) {
      // @unroll
      for (var j = 0u; j < KEYS_PER_LANE; j++) { s[i][j] = 0.0; }
    }
    for (var c = 0u; c < quads; c++) {
      var qv: array<vec4f, 4>;
      // @unroll
      for (var i = 0u; i < 4u; i++) { qv[i] = get_q((row0 + i) * quads + c); }
      // @unroll
      for (var j = 0u; j < KEYS_PER_LANE; j++) {
        let kv = get_k((lane + LANES * j) * k_stride + c);
        // @unroll
        for (var i = 0u; i < 4u; i++) { s[i][j] += dot(qv[i], kv); }
      }
    }
    // Mask only where some key may be hidden from some row: the causal diagonal, the row end, the ring.
    let needs_mask = ring_tile || key0 + TILE_KEYS > len || key0 + TILE_KEYS - 1u > first_q ||
      tokens_here < TILE_TOKENS || TILE_TOKENS * group < TILE_ROWS;
    var lane_max = vec4f(MASKED);
    // @unroll
    for (var j = 0u; j < KEYS_PER_LANE; j++) {
      let key = key0 + lane + LANES * j;
      // @unroll
      for (var i = 0u; i < 4u; i++) {
        var seen = true;
        if (needs_mask) {
          let t = row_token[i];
          seen = t < tokens_here && key < len && key_visible(first_q + t, key, row, first_pos + t);
        }
        if (!seen) { s[i][j] = MASKED; }
        lane_max[i] = max(lane_max[i], s[i][j]);
      }
    }
    // The rows' maxima over the quad's lanes: by shuffles (subgroup_max), or through lane_stat.
    var quad_max = lane_max;
    if (subgroup_max != 0u) {
      for (var k = 1u; k < LANES; k <<= 1u) { quad_max = max(quad_max, shuffle_xor(quad_max, k, tid)); }
    } else {
      // @unroll
      for (var i = 0u; i < 4u; i++) { lane_stat[(row0 + i) * LANES + lane] = lane_max[i]; }
      workgroupBarrier();
    }

    // 3. Softmax: the rows' maxima over the tile, the rescale factor, this lane's probabilities.
    var alpha = vec4f(1.0);
    // @unroll
    for (var i = 0u; i < 4u; i++) {
      var tile_max = quad_max[i];
      if (subgroup_max == 0u) {
        tile_max = MASKED;
        // @unroll
        for (var k = 0u; k < LANES; k++) { tile_max = max(tile_max, lane_stat[(row0 + i) * LANES + k]); }
      }
      let m_new = max(m[i], tile_max);
      if (m_new > MASKED) { alpha[i] = exp(m[i] - m_new); }
      m[i] = m_new;
    }
    var lane_sum = vec4f(0.0);
    // @unroll
    for (var j = 0u; j < KEYS_PER_LANE; j++) {
      var p = vec4f(0.0);
      // @unroll
      for (var i = 0u; i < 4u; i++) {
        if (s[i][j] > MASKED) { p[i] = exp(s[i][j] - m[i]); }
      }
      p = stored_p(p);
      lane_sum += p;
      put_p((lane + LANES * j) * QUADS + quad, p);
    }
    l = l * alpha + lane_sum;
    // @unroll
    for (var i = 0u; i < 4u; i++) {
      // @unroll
      for (var j = 0u; j < PAIRS_PER_LANE; j++) { acc[i][j] *= alpha[i]; }
    }
    workgroupBarrier();

    // 4. O += P·V for rows row0 + i × value pairs lane + 8·j.
    for (var t = 0u; t < TILE_KEYS; t++) {
      let p = get_p(t * QUADS + quad);
      // @unroll
      for (var j = 0u; j < PAIRS_PER_LANE; j++) {
        let pair = lane + LANES * j;
        if (pair < half_dim) {
          let v = get_v(t * half_dim + pair);
          // @unroll
          for (var i = 0u; i < 4u; i++) { acc[i][j] += p[i] * v; }
        }
      }
    }
  }

  workgroupBarrier(); // every lane has read its last maxima
  // @unroll
  for (var i = 0u; i < 4u; i++) { lane_stat[(row0 + i) * LANES + lane] = l[i]; }
  workgroupBarrier();
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    let t = row_token[i];
    if (t < tokens_here) {
      var sum = 0.0;
      // @unroll
      for (var k = 0u; k < LANES; k++) { sum += lane_stat[(row0 + i) * LANES + k]; }
      if (splits > 1u) {
        // Unnormalised, with the row's max and sum, for `reduce`.
        let at = (wg.y * max_tokens + token0 + t) * group + (row0 + i) % group;
        // @unroll
        for (var j = 0u; j < PAIRS_PER_LANE; j++) {
          let pair = lane + LANES * j;
          if (pair < half_dim) {
            partials[at * head_dim + 2u * pair] = acc[i][j].x;
            partials[at * head_dim + 2u * pair + 1u] = acc[i][j].y;
          }
        }
        if (lane == 0u) {
          let stats = SLOTS * max_tokens * group * head_dim + 2u * at;
          partials[stats] = m[i];
          partials[stats + 1u] = sum;
        }
      } else {
        let inv = select(0.0, 1.0 / sum, sum > 0.0);
        let o = (token0 + t) * stride + (first_head + (row0 + i) % group) * head_dim;
        // @unroll
        for (var j = 0u; j < PAIRS_PER_LANE; j++) {
          let pair = lane + LANES * j;
          if (pair < half_dim) {
            out[o + 2u * pair] = acc[i][j].x * inv;
            out[o + 2u * pair + 1u] = acc[i][j].y * inv;
          }
        }
      }
    }
  }
}

const REDUCE_THREADS: u32 = 64u;

// Key splits: grid (max_tokens, q_heads). Merges the slots of the query head's KV head for one token: their
// maxima first, then each thread rescales and adds the outputs of dimensions tid, tid + 64, … A slot with
// no visible key has max MASKED and sum 0, so it weighs nothing.
@compute @workgroup_size(REDUCE_THREADS)
fn reduce(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let token = wg.x;
  let head = wg.y;
  if (token >= step.n_tokens) { return; }
  let kv_head = head / group;
  let local = head % group;
  stage_head_lengths((sequence.slot * layers + layer_params.layer) * kv_heads, tid, REDUCE_THREADS);
  let plan = plan_slots(kv_head, SLOTS);
  let stats = SLOTS * max_tokens * group * head_dim;
  var m_all = MASKED;
  for (var s = 0u; s < plan.head_count; s++) {
    let at = ((plan.head_first + s) * max_tokens + token) * group + local;
    m_all = max(m_all, partials_in[stats + 2u * at]);
  }
  var total = 0.0;
  for (var s = 0u; s < plan.head_count; s++) {
    let at = ((plan.head_first + s) * max_tokens + token) * group + local;
    total += exp(partials_in[stats + 2u * at] - m_all) * partials_in[stats + 2u * at + 1u];
  }
  let inv = select(0.0, 1.0 / total, total > 0.0);
  for (var d = tid; d < head_dim; d += REDUCE_THREADS) {
    var acc = 0.0;
    for (var s = 0u; s < plan.head_count; s++) {
      let at = ((plan.head_first + s) * max_tokens + token) * group + local;
      acc += exp(partials_in[stats + 2u * at] - m_all) * partials_in[at * head_dim + d];
    }
    out[token * q_heads * head_dim + head * head_dim + d] = acc * inv;
  }
}

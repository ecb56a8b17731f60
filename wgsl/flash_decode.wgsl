// Split-K flash decoding: one query token per query head attends to every key of its KV head, read
// through the block table. Entry `main` computes partial results over a range of pages; entry `reduce`
// merges them with log-sum-exp rescaling.
//
// binding 0: step, uniform { n_tokens, pos0 }: pos0 is the query's position (read in WG-KV mode only; a
//            placeholder is bound otherwise)
// binding 1: sequence, uniform { slot } (the KV cache's sequence selector); the query is the row's last token
// binding 2: layer_params, uniform { layer }
// binding 3: q, f32[q_heads * head_dim] (read), the query after RoPE
// binding 4: partials, f32 (written by `main`): weighted V sums [slots][group][head_dim], then
//            [slots][group][2] (running max, sum of weights); slot = a workgroup column of the grid
// binding 5: out, f32[q_heads * head_dim] (write, by `reduce`)
// binding 6: block_table, u32[seq_slots][layers][kv_heads][max_pages] (read)
// binding 7: lengths, u32[seq_slots][layers][kv_heads] (read), including the current token
// binding 8…: pool shards (read) as vec4<u32>, see the generated block below.
// binding 16: slot_info, u32[seq_slots][layers][kv_heads][ring_tokens] (read), WG-KV mode only (a placeholder
//            is bound otherwise): position * 2 + admitted of the token in each ring slot of the dual cache.
// binding 17: partial_sums, vec4<f32>[slots][group][head_dim / 4] (read, by `reduce`): the V-sum part of
//             `partials`
// binding 18: partial_stats, f32 (read, by `reduce`): the whole of `partials`, for the (max, sum) pairs
//
// WG-KV mode (wgkv_window > 0): the row is a dual cache, ring slots [0, ring_tokens) then global tokens; a
// ring key at position p is seen iff p <= q and (q - p < wgkv_window or it was admitted), every global key
// is seen. A split whose keys are all masked contributes a zero sum (weights of masked keys are 0).
//
// Splits: the grid is fixed at (slots = splits * kv_heads, head batches) so the same commands replay every
// token. The slots are shared out among the KV heads of the (sequence, layer) on the GPU, from the row
// lengths: one to every head with keys, the rest in proportion to its pages (plan_slots()), so heads of
// very different lengths (WG-KV admits per head) finish together. A head's pages are cut into ranges of
// ceil(n / its slots) pages; slots without pages exit at once.
//
// Work in `main`: a workgroup serves up to 4 query heads of one KV head (a head batch; the 4 heads are the
// lanes of a vec4, so one load of each K and V row serves all of them). Keys are taken in blocks of
// `block_keys` (= the workgroup size):
//   1. scores: thread t owns key t of the block: it loads the key's whole K and V rows at once (16-byte
//      loads under one choice of the page's shard, LOAD_ROWS), computes its dot products with the 4
//      queries (no reduction between threads) and stores the V row in workgroup memory (v_block);
//   2. values: the threads form key groups of head_dim / 8 lanes; lane i owns output dimensions
//      [8i, 8i + 8) of the 4 heads, and each key group walks its own slice of the block's keys with its own
//      online softmax (running max and sum per head), reading the V rows from v_block;
//   3. after the last block the key groups' states are merged pairwise in workgroup memory.
// Two barriers per block of keys, none inside the dot products. All global loads of a block are issued
// before any is used, inside one branch, so a block should cost one round trip to memory. (Measured on an
// H100 before this layout: V read per key group, v_chunk keys at a time, and one pool branch per 16-byte
// load ran at about 600 GB/s, a third of the copy bandwidth; skipping the V loads alone made it 3× faster.)

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
override block_keys: u32 = 128u; // keys per block = threads per workgroup of `main` (>= head_dim / 8)
override k_quads: u32 = 8u; // head_dim / 8: 16-byte words per K row

const PAGE_TOKENS: u32 = 16u;
const HEADS_PER_BATCH: u32 = 4u;
const DIMS_PER_LANE: u32 = 8u; // one vec4<u32> of packed f16 pairs
const MASKED: f32 = -3.0e38;
const REDUCE_THREADS: u32 = 256u;
// XOR mask of the v_block swizzle: k_quads − 1 when k_quads is a power of two (else no swizzle).
const V_SWIZZLE: u32 = select(0u, k_quads - 1u, (k_quads & (k_quads - 1u)) == 0u);

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
@group(0) @binding(17) var<storage, read> partial_sums: array<vec4f>;
@group(0) @binding(18) var<storage, read> partial_stats: array<f32>;

{{POOL}}

// `main`: scaled queries of the head batch, [head_dim] of vec4 (lane c = head c of the batch, 0 if absent).
var<workgroup> q_batch: array<vec4f, head_dim>;
// `main`: scores of the block's keys (vec4 over the batch's heads), MASKED for unseen keys.
var<workgroup> scores: array<vec4f, block_keys>;
// `main`: merge slots, one per key group of the upper half (at least one declared): V sums [slot][head_dim]
// and (max, sum) [slot][2].
var<workgroup> merge_sums: array<vec4f, max(1u, block_keys / (head_dim / DIMS_PER_LANE) / 2u) * head_dim>;
var<workgroup> merge_stats: array<vec4f, max(1u, block_keys / (head_dim / DIMS_PER_LANE) / 2u) * 2u>;
// `main`: the block's V rows as packed f16, quad p of key t at t * k_quads + (p ^ (t & V_SWIZZLE)): the
// swizzle spreads a warp's row stores (one row per thread) over all banks.
var<workgroup> v_block: array<vec4u, block_keys * k_quads>;
var<workgroup> slot_plan: vec4u; // `main`: (kv head, first slot of the head, its slot count, row length)

// `reduce`: tree of maxima, then per-thread partial sums.
var<workgroup> reduce_max: array<f32, REDUCE_THREADS>;
var<workgroup> reduce_sums: array<vec4f, REDUCE_THREADS>;
var<workgroup> reduce_weights: array<f32, REDUCE_THREADS>;

// Whether the query sees the key of logical index k_index of row `row` (WG-KV mask; always in plain mode).
fn key_visible(row: u32, k_index: u32) -> bool {
  if (wgkv_window == 0u || k_index >= ring_tokens) { return true; }
  let info = slot_info[row * ring_tokens + k_index];
  let k_pos = info >> 1u;
  let q_pos = step.pos0;
  return k_pos <= q_pos && (q_pos - k_pos < wgkv_window || (info & 1u) == 1u);
}

const SLOTS: u32 = splits * kv_heads;

// #include slot_plan

// Pages [first, end) of the i-th of `count` slots over a row of `len` tokens (first >= end when it has none).
fn slot_range(i: u32, count: u32, len: u32) -> vec2u {
  let n_pages = pages_of(len);
  let per = (n_pages + count - 1u) / count;
  return vec2u(i * per, min(i * per + per, n_pages));
}

// Slots of `count` that have pages for a row of `len` tokens (they are the first ones).
fn used_slots(count: u32, len: u32) -> u32 {
  let n_pages = pages_of(len);
  if (n_pages == 0u || count == 0u) { return 0u; }
  let per = (n_pages + count - 1u) / count;
  return (n_pages + per - 1u) / per;
}

// Pool quad (vec4<u32> index inside a page) of quad `quad` of key `key`'s K row; V rows follow all K rows.
fn key_quad(key: u32, quad: u32) -> u32 {
  return (key % PAGE_TOKENS) * (head_dim / DIMS_PER_LANE) + quad;
}

// The 4 heads' dot products with the 8 key dimensions packed in `k`, which are dimensions 8 * quad + [0, 8).
fn dot8(k: vec4u, quad: u32) -> vec4f {
  let d = quad * DIMS_PER_LANE;
  let a = unpack2x16float(k.x);
  let b = unpack2x16float(k.y);
  let c = unpack2x16float(k.z);
  let e = unpack2x16float(k.w);
  return q_batch[d] * a.x + q_batch[d + 1u] * a.y + q_batch[d + 2u] * b.x + q_batch[d + 3u] * b.y +
    q_batch[d + 4u] * c.x + q_batch[d + 5u] * c.y + q_batch[d + 6u] * e.x + q_batch[d + 7u] * e.y;
}

// Adds weight `w` (vec4 over heads) times the 8 values packed in `v` to the lane's sums.
fn accumulate(sums: ptr<function, array<vec4f, 8>>, w: vec4f, v: vec4u) {
  let a = unpack2x16float(v.x);
  let b = unpack2x16float(v.y);
  let c = unpack2x16float(v.z);
  let e = unpack2x16float(v.w);
  (*sums)[0] += w * a.x;
  (*sums)[1] += w * a.y;
  (*sums)[2] += w * b.x;
  (*sums)[3] += w * b.y;
  (*sums)[4] += w * c.x;
  (*sums)[5] += w * c.y;
  (*sums)[6] += w * e.x;
  (*sums)[7] += w * e.y;
}

// Softmax weights of scores `s` against running max `m` (0 for masked keys).
fn key_weight(s: vec4f, m: vec4f) -> vec4f {
  return select(vec4f(0.0), exp(s - m), s > vec4f(MASKED));
}

@compute @workgroup_size(block_keys)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let group = q_heads / kv_heads;
  let slot = wg.x;
  let batch = wg.y;
  let base_row = (sequence.slot * layers + layer_params.layer) * kv_heads;
  stage_head_lengths(base_row, tid, block_keys);
  if (tid == 0u) {
    let plan = plan_slots(0u, slot);
    slot_plan = vec4u(plan.owner, plan.owner_first, plan.owner_count, head_lengths[plan.owner]);
  }
  let plan = workgroupUniformLoad(&slot_plan);
  let kv_head = plan.x;
  let len = plan.w;
  if (plan.z == 0u) { return; }
  let range = slot_range(slot - plan.y, plan.z, len);
  if (range.x >= range.y) { return; }
  let row = base_row + kv_head;

  let first_local = batch * HEADS_PER_BATCH; // first head of the batch within the group
  let first_head = kv_head * group + first_local;
  let batch_heads = min(HEADS_PER_BATCH, group - batch * HEADS_PER_BATCH);
  for (var d = tid; d < head_dim; d += block_keys) {
    var qv = vec4f(0.0);
    for (var c = 0u; c < batch_heads; c++) { qv[c] = q[(first_head + c) * head_dim + d] * scale; }
    q_batch[d] = qv;
  }

  let quads = head_dim / DIMS_PER_LANE; // vec4<u32> per K or V row
  let key_groups = block_keys / quads;
  let keys_per_group = (block_keys + key_groups - 1u) / key_groups;
  let lane = tid % quads;
  let key_group = tid / quads;
  let table = row * max_pages;

  var run_max = vec4f(MASKED);
  var run_sum = vec4f(0.0);
  var sums: array<vec4f, 8>;
  // @unroll
  for (var i = 0u; i < 8u; i++) { sums[i] = vec4f(0.0); }

  let first_key = range.x * PAGE_TOKENS;
  let end_key = min(range.y * PAGE_TOKENS, len);
  for (var block = first_key; block < end_key; block += block_keys) {
    workgroupBarrier(); // q_batch is written (first block); the previous block's scores are read

    // 1. Scores and V rows: thread tid owns key block + tid. Keys past the end or masked get a zero V row
    // (their weight is 0, and 0 times a stale row could be NaN).
    let key = block + tid;
    var s = vec4f(MASKED);
    var v_row: array<vec4u, k_quads>;
    // @unroll
    for (var p = 0u; p < k_quads; p++) { v_row[p] = vec4u(0u); }
    if (key < end_key && key_visible(row, key)) {
      // Both whole rows are loaded before any arithmetic, so all their 16-byte loads are in flight at once.
      var row_words: array<vec4u, k_quads>;
      let row_page = block_table[table + key / PAGE_TOKENS];
      let row_quad = key_quad(key, 0u);
      // The rows into row_words and v_row, the page's shard chosen once (generated, spliced in here).
      {{LOAD_ROWS}}
      var acc = vec4f(0.0);
      // @unroll
      for (var p = 0u; p < k_quads; p++) { acc += dot8(row_words[p], p); }
      s = acc;
    }
    // @unroll
    for (var p = 0u; p < k_quads; p++) { v_block[tid * k_quads + (p ^ (tid & V_SWIZZLE))] = v_row[p]; }
    scores[tid] = s;
    workgroupBarrier();

    // 2. Values: key group `key_group` takes keys [t_begin, t_end) of the block.
    let t_begin = key_group * keys_per_group;
    let t_end = min(t_begin + keys_per_group, min(block_keys, end_key - block));
    if (key_group < key_groups && t_begin < t_end) {
      var block_max = run_max;
      for (var t = t_begin; t < t_end; t++) { block_max = max(block_max, scores[t]); }
      let alpha = exp(run_max - block_max);
      run_sum *= alpha;
      // @unroll
      for (var i = 0u; i < 8u; i++) { sums[i] *= alpha; }
      run_max = block_max;
      for (var t = t_begin; t < t_end; t++) {
        let p = key_weight(scores[t], run_max);
        run_sum += p;
        accumulate(&sums, p, v_block[t * k_quads + (lane ^ (t & V_SWIZZLE))]);
      }
    }
  }

  // 3. Merge the key groups: the upper half hands its state to the lower half until one group is left.
  var n = key_groups;
  while (n > 1u) {
    let half = (n + 1u) / 2u;
    workgroupBarrier();
    if (key_group >= half && key_group < n) {
      let slot = key_group - half;
      // @unroll
      for (var i = 0u; i < 8u; i++) { merge_sums[slot * head_dim + lane * DIMS_PER_LANE + i] = sums[i]; }
      if (lane == 0u) {
        merge_stats[2u * slot] = run_max;
        merge_stats[2u * slot + 1u] = run_sum;
      }
    }
    workgroupBarrier();
    if (key_group < n - half) {
      let slot = key_group;
      let other_max = merge_stats[2u * slot];
      let m = max(run_max, other_max);
      let a = exp(run_max - m);
      let b = exp(other_max - m);
      run_sum = run_sum * a + merge_stats[2u * slot + 1u] * b;
      // @unroll
      for (var i = 0u; i < 8u; i++) {
        sums[i] = sums[i] * a + merge_sums[slot * head_dim + lane * DIMS_PER_LANE + i] * b;
      }
      run_max = m;
    }
    n = half;
  }

  if (key_group == 0u) {
    for (var c = 0u; c < batch_heads; c++) {
      let o = ((slot * group + first_local + c) * head_dim) + lane * DIMS_PER_LANE;
      // @unroll
      for (var i = 0u; i < 8u; i++) { partials[o + i] = sums[i][c]; }
      if (lane == 0u) {
        let so = SLOTS * group * head_dim + (slot * group + first_local + c) * 2u;
        partials[so] = run_max[c];
        partials[so + 1u] = run_sum[c];
      }
    }
  }
}

// Grid: (q_heads). Merges the splits that had pages for the query head's KV head: the maximum over splits
// by a tree, then thread (r, c) sums splits r, r + rows, … of column c (4 dimensions), then row 0 adds up.
@compute @workgroup_size(REDUCE_THREADS)
fn reduce(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let head = wg.x;
  let group = q_heads / kv_heads;
  let kv_head = head / group;
  let local = head % group;
  let base_row = (sequence.slot * layers + layer_params.layer) * kv_heads;
  stage_head_lengths(base_row, tid, REDUCE_THREADS);
  let len = head_lengths[kv_head];
  let plan = plan_slots(kv_head, SLOTS);
  let slots = vec2u(plan.head_first, plan.head_count);
  let used = used_slots(slots.y, len);
  let stats = SLOTS * group * head_dim;

  var m = MASKED;
  for (var s = tid; s < used; s += REDUCE_THREADS) {
    m = max(m, partial_stats[stats + ((slots.x + s) * group + local) * 2u]);
  }
  reduce_max[tid] = m;
  for (var stride = REDUCE_THREADS / 2u; stride > 0u; stride /= 2u) {
    workgroupBarrier();
    if (tid < stride) { reduce_max[tid] = max(reduce_max[tid], reduce_max[tid + stride]); }
  }
  workgroupBarrier();
  let m_all = reduce_max[0];

  let columns = head_dim / 4u;
  let rows = REDUCE_THREADS / columns;
  let column = tid % columns;
  let r = tid / columns;
  var acc = vec4f(0.0);
  var total = 0.0;
  if (r < rows) {
    // Four splits per iteration, their loads independent of each other (splits past `used` weigh 0).
    for (var s0 = r; s0 < used; s0 += 4u * rows) {
      // @unroll
      for (var k = 0u; k < 4u; k++) {
        let s = slots.x + min(s0 + k * rows, used - 1u);
        let so = stats + (s * group + local) * 2u;
        let w = select(0.0, exp(partial_stats[so] - m_all), s0 + k * rows < used);
        total += w * partial_stats[so + 1u];
        acc += w * partial_sums[(s * group + local) * columns + column];
      }
    }
  }
  reduce_sums[tid] = acc;
  reduce_weights[tid] = total;
  workgroupBarrier();
  if (r == 0u) {
    var a = vec4f(0.0);
    var t = 0.0;
    for (var i = 0u; i < rows; i++) {
      a += reduce_sums[i * columns + column];
      t += reduce_weights[i * columns + column];
    }
    let inv = select(0.0, 1.0 / t, t > 0.0);
    for (var c = 0u; c < 4u; c++) { out[head * head_dim + column * 4u + c] = a[c] * inv; }
  }
}

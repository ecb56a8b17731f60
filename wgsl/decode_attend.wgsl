// Decode attention over one KV head's row of the paged KV cache: one query token, a batch of up to 4
// query heads of the head's GQA group. The core of wgsl/flash_decode.wgsl's partial pass and direct mode,
// which include it with `// #include decode_attend`.
//
// A library, not a kernel. The including shader declares
//   overrides `head_dim`, `k_quads` (head_dim / 8: 16-byte words per K row), `key_lanes`, `tile_steps`,
//     `max_pages`, `pool_pages_per_shard`, and the const `PAGE_TOKENS`;
//   `block_table: array<u32>` (u32[rows][max_pages]) and the pool shards, and the text define LOAD_QUADS,
//     which sets k_words[u] and v_words[u] to the K and V quads `at` (16-byte words counted from the
//     start of the page's shard) of page `page`;
//   `fn key_visible(row: u32, k_index: u32) -> bool`: the WG-KV mask (or always true);
//   `fn attend_query(head: u32, d: u32) -> f32`: query head `head`'s value at dimension d, scaled;
//   `fn attend_store(index: u32, value: f32)`: writes output value `index` (head · head_dim + d).
//
// Threads: ATTEND_THREADS = key_lanes × k_quads; thread (key_lane, lane) = (tid / k_quads, tid % k_quads)
// owns dimensions [8 lane, 8 lane + 8) of key lane key_lane. Keys are taken in tiles of tile_steps ×
// key_lanes; in step u of a tile, key lane j holds key u · key_lanes + j, so a step's loads are whole
// consecutive rows, consecutive threads reading consecutive 16-byte words of the page (coalesced). The 4
// heads of a batch are the lanes of a vec4, so one load of each K and V quad serves all of them.
//   1. loads: every thread issues all its K and V quads of the tile before using any (clamped to the last
//      key, so no branch), then writes its partial dot products (vec4 over heads) to workgroup memory;
//   2. scores: one thread per key of the tile adds up the key's k_quads partials and applies the mask;
//      with subgroup_dots = 1 instead, each thread gets its keys' whole dot products from the key's
//      k_quads threads (attend_key_total: a butterfly of shuffles) and applies the mask itself, so the
//      scores stay in registers and the tile needs no barrier;
//   3. values: each key lane keeps its own online softmax (running max and sum per head) over its keys,
//      and each thread adds its V quads, weighted, into its 8 × 4 sums;
//   4. (attend_merge_lanes) the key lanes' states are merged pairwise in workgroup memory, log2(key_lanes)
//      rounds; with subgroup_lanes > 1 the key lanes of a subgroup first merge by shuffles, and the rounds
//      take one lane per subgroup.
// Two barriers per tile (none with subgroup_dots).
//
// shuffle_xor(v, mask, tid) comes from the text define SHUFFLE (src/gpu/ops/attention.ts): a subgroup
// shuffle (wgsl/shuffle_xor.wgsl, on a device opened with `subgroups`), the same exchange through
// workgroup memory (wgsl/shuffle_xor_emulated.wgsl, for GPUs without subgroups: tests), or a stub when
// subgroup_dots = 0.

// 1: the scores of a tile are summed across each key's threads by attend_key_total and stay in registers;
// 0: through workgroup memory, a thread per key.
override subgroup_dots: u32 = 0u;
// attend_merge_lanes: key lanes per subgroup merged by shuffles before the rounds through workgroup memory
// (1: none; else a power of two, key_lanes a multiple of it, and subgroup_lanes · k_quads invocations in one
// subgroup).
override subgroup_lanes: u32 = 1u;

const HEADS_PER_BATCH: u32 = 4u;
const DIMS_PER_LANE: u32 = 8u; // one vec4<u32> of packed f16 pairs
const MASKED: f32 = -3.0e38;
const ATTEND_THREADS: u32 = key_lanes * k_quads;
const TILE_KEYS: u32 = tile_steps * key_lanes;
// Merge slots of the key lanes' final states: the upper half of the lanes hand over 8 sums + max + sum.
const MERGE_THREADS: u32 = (key_lanes + 1u) / 2u * k_quads;

// The tiles' partial dot products, key k's lane p at k * (k_quads + 1) + p (padded: the score threads read
// a row each without bank conflicts); in attend_merge_lanes, the merge slots: value i of merge slot m at
// i * MERGE_THREADS + m (i < 8: sums, 8: max, 9: sum). Includers may use it between calls (flash_decode's
// split merge does): it holds at least 5 · ATTEND_THREADS entries (MERGE_THREADS · 10 ≥ key_lanes / 2 ·
// k_quads · 10).
var<workgroup> exchange: array<vec4f, max(TILE_KEYS * (k_quads + 1u), MERGE_THREADS * 10u)>;
// Scores of the tile's keys (vec4 over the batch's heads), MASKED for unseen keys.
var<workgroup> tile_scores: array<vec4f, TILE_KEYS>;

// One key lane's online softmax over its keys, for the 4 heads of a batch: running max, sum of weights,
// and the thread's 8 dimensions of the weighted V sums.
struct AttendState {
  run_max: vec4f,
  run_sum: vec4f,
  sums: array<vec4f, 8>,
}

// The 4 heads' dot products (scaled queries `qd`, 8 dimensions) with the 8 key dimensions packed in `k`.
fn attend_dot8(qd: array<vec4f, 8>, k: vec4u) -> vec4f {
  let a = unpack2x16float(k.x);
  let b = unpack2x16float(k.y);
  let c = unpack2x16float(k.z);
  let e = unpack2x16float(k.w);
  return qd[0] * a.x + qd[1] * a.y + qd[2] * b.x + qd[3] * b.y + qd[4] * c.x + qd[5] * c.y + qd[6] * e.x +
    qd[7] * e.y;
}

// subgroup_dots: the whole dot products (vec4 over the batch's heads) of this thread's key, the sum of its
// k_quads consecutive threads' partials by a butterfly of shuffles (every thread of the key gets it).
// Every thread of the workgroup must call it.
fn attend_key_total(dot: vec4f, tid: u32) -> vec4f {
  var s = dot;
  for (var m = 1u; m < k_quads; m <<= 1u) { s += shuffle_xor(s, m, tid); }
  return s;
}

// Adds weight `w` (vec4 over heads) times the 8 values packed in `v` to the lane's sums.
fn attend_accumulate(sums: ptr<function, array<vec4f, 8>>, w: vec4f, v: vec4u) {
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
fn attend_key_weight(s: vec4f, m: vec4f) -> vec4f {
  return select(vec4f(0.0), exp(s - m), s > vec4f(MASKED));
}

// The thread's 8 dimensions (lane `lane`) of the batch's scaled queries: heads first_head … first_head +
// batch_heads − 1 in the vec4 lanes, 0 past them.
fn attend_queries(first_head: u32, batch_heads: u32, lane: u32) -> array<vec4f, 8> {
  var qd: array<vec4f, 8>;
  // @unroll
  for (var i = 0u; i < 8u; i++) {
    let d = lane * DIMS_PER_LANE + i;
    qd[i] = vec4f(
      attend_batch_query(first_head, 0u, batch_heads, d),
      attend_batch_query(first_head, 1u, batch_heads, d),
      attend_batch_query(first_head, 2u, batch_heads, d),
      attend_batch_query(first_head, 3u, batch_heads, d),
    );
  }
  return qd;
}

// Query head `first_head + c`'s scaled value at dimension d (0 past the batch's heads).
fn attend_batch_query(first_head: u32, c: u32, batch_heads: u32, d: u32) -> f32 {
  return select(0.0, attend_query(first_head + min(c, batch_heads - 1u), d), c < batch_heads);
}

// Where key `key` of the row whose block table starts at `table` lies: its page, and the 16-byte word of
// this thread's quad `lane` of its K row counted from the start of the page's shard (LOAD_QUADS reads K
// there and V half a page on).
fn attend_locate(table: u32, key: u32, lane: u32) -> vec2u {
  let page = block_table[table + key / PAGE_TOKENS];
  return vec2u(page, (page % pool_pages_per_shard) * (PAGE_TOKENS * head_dim / 4u) + (key % PAGE_TOKENS) * k_quads + lane);
}

// Keys [first_key, end_key) of row `row` in `tiles` tiles (uniform over the workgroup), starting at tile
// `rotation` and wrapping around: this thread's key lane's online softmax. Every thread of the workgroup
// must call it.
fn attend_tiles(
  row: u32,
  first_key: u32,
  end_key: u32,
  tiles: u32,
  rotation: u32,
  qd: array<vec4f, 8>,
  tid: u32,
) -> AttendState {
  let lane = tid % k_quads;
  let key_lane = tid / k_quads;
  let table = row * max_pages;
  var run_max = vec4f(MASKED);
  var run_sum = vec4f(0.0);
  var sums: array<vec4f, 8>;
  // @unroll
  for (var i = 0u; i < 8u; i++) { sums[i] = vec4f(0.0); }
  for (var i = 0u; i < tiles; i++) {
    var tile = i + rotation;
    if (tile >= tiles) { tile -= tiles; }
    let tile_first = first_key + tile * TILE_KEYS;

    // 1. Loads (clamped to the last key: a duplicate is masked below), then the partial dot products.
    var k_words: array<vec4u, tile_steps>;
    var v_words: array<vec4u, tile_steps>;
    // @unroll
    for (var u = 0u; u < tile_steps; u++) {
      let page_at = attend_locate(table, min(tile_first + u * key_lanes + key_lane, end_key - 1u), lane);
      let page = page_at.x;
      let at = page_at.y;
      {{LOAD_QUADS}}
    }
    // subgroup_dots: the scores of this thread's key lane's keys of the tile (MASKED for unseen keys),
    // in registers (never written otherwise, so the compiler drops them).
    var scores: array<vec4f, tile_steps>;
    // @unroll
    for (var u = 0u; u < tile_steps; u++) {
      let dot = attend_dot8(qd, k_words[u]);
      if (subgroup_dots != 0u) {
        // 2. (subgroup_dots) The key's whole dot products from its threads, masked here.
        let key = tile_first + u * key_lanes + key_lane;
        scores[u] = select(vec4f(MASKED), attend_key_total(dot, tid), key < end_key && key_visible(row, key));
      } else {
        exchange[(u * key_lanes + key_lane) * (k_quads + 1u) + lane] = dot;
      }
    }
    if (subgroup_dots == 0u) {
      workgroupBarrier();
      // 2. Scores, one thread per key of the tile.
      for (var k = tid; k < TILE_KEYS; k += ATTEND_THREADS) {
        var s = vec4f(0.0);
        for (var p = 0u; p < k_quads; p++) { s += exchange[k * (k_quads + 1u) + p]; }
        let key = tile_first + k;
        tile_scores[k] = select(vec4f(MASKED), s, key < end_key && key_visible(row, key));
      }
      workgroupBarrier();
    }

    // 3. Values: the key lane's online softmax over its keys of the tile. Unseen keys weigh 0 and their V
    // quads are replaced by zeros (0 times a stale row could be NaN).
    var tile_max = run_max;
    // @unroll
    for (var u = 0u; u < tile_steps; u++) {
      tile_max = max(tile_max, select(tile_scores[u * key_lanes + key_lane], scores[u], subgroup_dots != 0u));
    }
    let alpha = exp(run_max - tile_max);
    run_sum *= alpha;
    // @unroll
    for (var j = 0u; j < 8u; j++) { sums[j] *= alpha; }
    run_max = tile_max;
    // @unroll
    for (var u = 0u; u < tile_steps; u++) {
      let s = select(tile_scores[u * key_lanes + key_lane], scores[u], subgroup_dots != 0u);
      let w = attend_key_weight(s, run_max);
      run_sum += w;
      attend_accumulate(&sums, w, select(vec4u(0u), v_words[u], any(s > vec4f(MASKED))));
    }
  }
  return AttendState(run_max, run_sum, sums);
}

// Merges the states of the first `lanes` key lanes (uniform; 1 leaves them as they are): with
// subgroup_lanes > 1, the key lanes of each subgroup first by shuffles (each then holds its group's
// state; lanes past `lanes` hold empty states, which merge as nothing); then the upper half of the groups
// hands its state to the lower half until one is left, whose first lane's threads return the total. Every
// thread of the workgroup must call it.
fn attend_merge_lanes(state: AttendState, lanes: u32, tid: u32) -> AttendState {
  let lane = tid % k_quads;
  let key_lane = tid / k_quads;
  var run_max = state.run_max;
  var run_sum = state.run_sum;
  var sums = state.sums;
  for (var m = k_quads; m < k_quads * subgroup_lanes; m <<= 1u) {
    let other_max = shuffle_xor(run_max, m, tid);
    let other_sum = shuffle_xor(run_sum, m, tid);
    var other: array<vec4f, 8>;
    // @unroll
    for (var i = 0u; i < 8u; i++) { other[i] = shuffle_xor(sums[i], m, tid); }
    let new_max = max(run_max, other_max);
    let a = exp(run_max - new_max);
    let b = exp(other_max - new_max);
    run_sum = run_sum * a + other_sum * b;
    // @unroll
    for (var i = 0u; i < 8u; i++) { sums[i] = sums[i] * a + other[i] * b; }
    run_max = new_max;
  }
  // The rounds, over groups of subgroup_lanes key lanes, each represented by its first lane.
  let group = key_lane / subgroup_lanes;
  let leads = key_lane % subgroup_lanes == 0u;
  var n = (lanes + subgroup_lanes - 1u) / subgroup_lanes;
  while (n > 1u) {
    let half = (n + 1u) / 2u;
    workgroupBarrier();
    if (leads && group >= half && group < n) {
      let m = (group - half) * k_quads + lane;
      // @unroll
      for (var i = 0u; i < 8u; i++) { exchange[i * MERGE_THREADS + m] = sums[i]; }
      exchange[8u * MERGE_THREADS + m] = run_max;
      exchange[9u * MERGE_THREADS + m] = run_sum;
    }
    workgroupBarrier();
    if (leads && group < n - half) {
      let m = group * k_quads + lane;
      let other_max = exchange[8u * MERGE_THREADS + m];
      let new_max = max(run_max, other_max);
      let a = exp(run_max - new_max);
      let b = exp(other_max - new_max);
      run_sum = run_sum * a + exchange[9u * MERGE_THREADS + m] * b;
      // @unroll
      for (var i = 0u; i < 8u; i++) { sums[i] = sums[i] * a + exchange[i * MERGE_THREADS + m] * b; }
      run_max = new_max;
    }
    n = half;
  }
  return AttendState(run_max, run_sum, sums);
}

// Key lane 0's thread `lane`: the batch's normalised outputs of its 8 dimensions through attend_store
// (zeros for a head without keys). The head lanes are indexed by constants only (unrolled): a dynamic
// index into `sums` could move the whole array to local memory for the entire kernel.
fn attend_write_out(state: AttendState, first_head: u32, batch_heads: u32, lane: u32) {
  let inv = select(vec4f(0.0), 1.0 / state.run_sum, state.run_sum > vec4f(0.0));
  // @unroll
  for (var c = 0u; c < HEADS_PER_BATCH; c++) {
    if (c < batch_heads) {
      let o = (first_head + c) * head_dim + lane * DIMS_PER_LANE;
      // @unroll
      for (var i = 0u; i < 8u; i++) { attend_store(o + i, state.sums[i][c] * inv[c]); }
    }
  }
}

// The workgroup the emulated shuffles exchange through.
const SHUFFLE_THREADS: u32 = ATTEND_THREADS;

{{SHUFFLE}}

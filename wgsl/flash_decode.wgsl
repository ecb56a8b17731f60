// Split-K flash decoding: one query token per query head attends to every key of its KV head, read
// through the block table. Entry `main` computes partial results over a range of pages, and its last
// workgroup per KV head merges them with log-sum-exp rescaling (or entry `reduce` does, a dispatch later).
//
// binding 0: step, uniform { n_tokens, pos0 }: pos0 is the query's position (read in WG-KV mode and with
//            uniform_rows only; a placeholder is bound otherwise)
// binding 1: sequence, uniform { slot } (the KV cache's sequence selector); the query is the row's last token
// binding 2: layer_params, uniform { layer }
// binding 3: q, f32[q_heads * head_dim] (read), the query after RoPE
// binding 4: partials, f32 (written by `main`, read by the merge): weighted V sums [slots][group][head_dim],
//            then [slots][group][2] (running max, sum of weights); slot = a workgroup column of the grid
// binding 5: out, f32[q_heads * head_dim] (write, by the merge, or by `main` in direct mode)
// binding 6: block_table, u32[seq_slots][layers][kv_heads][max_pages] (read)
// binding 7: lengths, u32[seq_slots][layers][kv_heads] (read), including the current token
// binding 32…: pool shards (read) as vec4<u32>, see the generated block below.
// binding 16: slot_info, u32[seq_slots][layers][kv_heads][ring_tokens] (read), WG-KV mode only (a placeholder
//            is bound otherwise): position * 2 + admitted of the token in each ring slot of the dual cache.
// binding 19: arrivals, atomic<u32>[kv_heads][head batches] (read-write, by `main`): workgroups of the
//             (KV head, head batch) that have written their partials in this dispatch (fused_reduce = 1);
//             zero between dispatches (the last arrival resets it), so one buffer serves every layer
// bindings 24, 25: the output as the output projection's int8 input, when the text define ATT_INT8 is
//             wgsl/attention_int8_out.wgsl (att_int8_out and att_int8_zero are stubs otherwise)
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
// Work in `main`: a workgroup serves up to 4 query heads of one KV head (a head batch) over its slot's
// keys, with the tiles and the key lanes' merge of wgsl/decode_attend.wgsl (its comment tells the thread
// layout and the steps). Each slot starts at a different tile of its range and wraps around
// (rotate_tiles), so the slots do not all read pages at the same offsets at the same time.
// Direct mode (direct = 1, compiled with splits = 1): one slot per KV head covers its whole row and `main`
// writes the normalised output itself, so short rows take one dispatch instead of two (the op picks it per
// step from the query's position).
// Fused reduce (fused_reduce = 1): after writing its partials each workgroup counts itself in `arrivals`;
// the last of its (KV head, head batch) to arrive merges the head's splits (merge_splits(), which entry
// `reduce` also runs) and writes the outputs, so the split path is one dispatch too. storageBarrier() orders the partials' writes before
// the count (device-scope release) and the count before the last one's reads (acquire), the pattern of
// a "last block" reduction; a head without keys gets zeros from workgroup `slot = head`. (WGSL promises
// storageBarrier() only within a workgroup; wgpu's shader translator lowers it with device scope on
// every backend: SPIR-V memory scope Device, Metal mem_device, HLSL DeviceMemoryBarrierWithGroupSync.)
// Measured on an H100 (8B model, 32K keys, 8 KV heads): 83 µs per layer, about 1.6 TB/s of K/V. The layout
// alone gained 7% (221 µs; one thread per whole K and V row before: 239 µs); writing the results with
// constant head-lane indices (below) gained the rest: one dynamic index into `sums` had moved the sums to
// local memory for the whole kernel.

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
override k_quads: u32 = 8u; // head_dim / 8: 16-byte words per K row
override key_lanes: u32 = 32u; // keys per step: threads of `main` = key_lanes * k_quads
override tile_steps: u32 = 4u; // steps per tile: keys per tile = tile_steps * key_lanes
override rotate_tiles: u32 = 1u; // 1: slot s starts at tile (5 s) mod its tiles; 0: at its first tile
override direct: u32 = 0u; // 1: `main` writes `out` (one slot per KV head), 0: it writes `partials`
override fused_reduce: u32 = 0u; // 1 (split path): the last workgroup of a KV head merges its splits
// 1: every KV head's row holds step.pos0 + 1 keys (the full cache at decode): `main` plans its slot without
// reading the lengths (uniform_slot_plan); 0: from the lengths (plan_slots).
override uniform_rows: u32 = 0u;
// Benchmarking only (outputs are then wrong): 1 ends every workgroup at once, 2 after its key tiles, 3 after
// its key lanes' merge and partials (before the split merge), to see where the time of `main` goes.
override ablate: u32 = 0u;

const PAGE_TOKENS: u32 = 16u;

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
@group(0) @binding(19) var<storage, read_write> arrivals: array<atomic<u32>>;

{{POOL}}

// #include int8_block
{{ATT_INT8}}

var<workgroup> slot_plan: vec4u; // `main`: (kv head, first slot of the head, its slot count, row length)
var<workgroup> last_arrival: u32; // `main` with fused_reduce: 1 in the last workgroup of its KV head


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

// uniform_rows: the plan of `slot` when every KV head's row holds `len` keys (kv head, first slot of the
// head, its slot count, len): what plan_slots gives for equal rows, head h's slots starting at
// h + (SLOTS − kv_heads) · h / kv_heads, with no lengths to read and no barrier.
fn uniform_slot_plan(slot: u32, len: u32) -> vec4u {
  if (direct != 0u) { return vec4u(slot, slot, 1u, len); }
  let spare = SLOTS - kv_heads;
  for (var h = 0u; h < kv_heads; h++) {
    let first = h + spare * h / kv_heads;
    let end = h + 1u + spare * (h + 1u) / kv_heads;
    if (slot >= first && slot < end) { return vec4u(h, first, end - first, len); }
  }
  return vec4u(0u, 0u, 0u, len);
}

// Slots of `count` that have pages for a row of `len` tokens (they are the first ones).
fn used_slots(count: u32, len: u32) -> u32 {
  let n_pages = pages_of(len);
  if (n_pages == 0u || count == 0u) { return 0u; }
  let per = (n_pages + count - 1u) / count;
  return (n_pages + per - 1u) / per;
}

// The scaled query of head `head` at dimension d (decode_attend's input).
fn attend_query(head: u32, d: u32) -> f32 {
  return q[head * head_dim + d] * scale;
}

// Output value `index` (decode_attend's direct-mode output).
fn attend_store(index: u32, value: f32) {
  out[index] = value;
}

// #include decode_attend

@compute @workgroup_size(ATTEND_THREADS)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  if (ablate == 1u) { return; }
  let group = q_heads / kv_heads;
  let slot = wg.x;
  let batch = wg.y;
  let base_row = (sequence.slot * layers + layer_params.layer) * kv_heads;
  // (kv head, first slot of the head, its slot count, row length)
  var plan: vec4u;
  if (uniform_rows != 0u) {
    plan = uniform_slot_plan(slot, step.pos0 + 1u);
  } else {
    stage_head_lengths(base_row, tid, ATTEND_THREADS);
    if (tid == 0u && direct != 0u) {
      slot_plan = vec4u(slot, slot, 1u, head_lengths[slot]);
    } else if (tid == 0u) {
      let p = plan_slots(0u, slot);
      slot_plan = vec4u(p.owner, p.owner_first, p.owner_count, head_lengths[p.owner]);
    }
    plan = workgroupUniformLoad(&slot_plan);
  }
  let kv_head = plan.x;
  let len = plan.w;
  let first_local = batch * HEADS_PER_BATCH; // first head of the batch within the group
  let first_head = kv_head * group + first_local;
  let batch_heads = min(HEADS_PER_BATCH, group - first_local);
  let lane = tid % k_quads;
  let key_lane = tid / k_quads;
  let range = slot_range(slot - plan.y, max(plan.z, 1u), len);
  // A slot without keys runs no tiles: its state stays empty (sums 0, and in direct mode outputs 0).
  let has_keys = plan.z != 0u && range.x < range.y;
  let row = base_row + kv_head;

  let qd = attend_queries(first_head, batch_heads, lane);
  let first_key = range.x * PAGE_TOKENS;
  let end_key = min(range.y * PAGE_TOKENS, len);
  let tiles = select(0u, (end_key - first_key + TILE_KEYS - 1u) / TILE_KEYS, has_keys);
  let rotation = select(0u, (slot * 5u) % max(tiles, 1u), rotate_tiles != 0u);
  let state = attend_tiles(row, first_key, end_key, tiles, rotation, qd, tid);

  if (ablate == 2u) {
    // (A store under a condition that never holds keeps the tiles' loads and arithmetic: every sum feeds
    // it, or the compiler could drop the V accumulation of the others.)
    if (layer_params.pad1 == 0x9e3779b9u) {
      var keep = state.run_sum + state.run_max;
      // @unroll
      for (var i = 0u; i < 8u; i++) { keep += state.sums[i]; }
      out[tid] = dot(keep, vec4f(1.0));
    }
    return;
  }
  // A slot without keys has nothing to merge. Direct mode writes the outputs, the split path its partials.
  let lanes = select(1u, key_lanes, has_keys);
  let first_slot_head = slot * group + first_local;
  write_lanes(attend_merge_lanes(state, lanes, tid), first_slot_head, first_head, batch_heads, has_keys, tid);
  if (direct != 0u) { att_int8_out(first_head, batch_heads, tid); }
  if (ablate == 3u) { return; }
  if (fused_reduce != 0u && direct == 0u) {
    if (uniform_rows == 0u && slot < kv_heads && head_lengths[slot] == 0u && key_lane == 0u) {
      // Head `slot` has no keys, hence no slots: its heads of this batch attend to nothing.
      let empty_first = slot * group + first_local;
      for (var c = 0u; c < batch_heads; c++) {
        for (var i = 0u; i < DIMS_PER_LANE; i++) { out[(empty_first + c) * head_dim + lane * DIMS_PER_LANE + i] = 0.0; }
        if ((lane * DIMS_PER_LANE) % 16u == 0u) { att_int8_zero((empty_first + c) * head_dim + lane * DIMS_PER_LANE); }
      }
    }
    if (plan.z != 0u) {
      storageBarrier(); // release: this workgroup's partials before its arrival
      let counter = kv_head * ((group + HEADS_PER_BATCH - 1u) / HEADS_PER_BATCH) + batch;
      if (tid == 0u) {
        last_arrival = select(0u, 1u, atomicAdd(&arrivals[counter], 1u) + 1u == plan.z);
      }
      if (workgroupUniformLoad(&last_arrival) == 1u) {
        storageBarrier(); // acquire: the other workgroups' partials after their arrivals
        if (tid == 0u) { atomicStore(&arrivals[counter], 0u); }
        merge_splits(plan.y, plan.z, len, first_local, first_head, batch_heads, tid);
        att_int8_out(first_head, batch_heads, tid);
      }
    }
  }
}

// After attend_merge_lanes: key lane 0's threads write their 8 dimensions of the batch's outputs (direct
// mode) or of its partials at slot head `first_slot_head` (slot · group + first local head), thread 0 the
// (max, sum of weights) pairs.
fn write_lanes(state: AttendState, first_slot_head: u32, first_head: u32, batch_heads: u32, has_keys: bool, tid: u32) {
  let lane = tid % k_quads;
  if (tid >= k_quads) { return; }
  if (direct != 0u) {
    attend_write_out(state, first_head, batch_heads, lane);
  } else if (has_keys) {
    // The head lanes are indexed by constants only (unrolled), see attend_write_out.
    // @unroll
    for (var c = 0u; c < HEADS_PER_BATCH; c++) {
      if (c < batch_heads) {
        let o = (first_slot_head + c) * head_dim + lane * DIMS_PER_LANE;
        // @unroll
        for (var i = 0u; i < 8u; i++) { partials[o + i] = state.sums[i][c]; }
        if (lane == 0u) {
          let so = SLOTS * (q_heads / kv_heads) * head_dim + (first_slot_head + c) * 2u;
          partials[so] = state.run_max[c];
          partials[so + 1u] = state.run_sum[c];
        }
      }
    }
  }
}

// Slots of the fused merge read per pass of a thread (their loads in flight together).
const MERGE_UNROLL: u32 = 8u;

// The merge of the split path (in the fused reduce's last workgroup of a KV head, or entry `reduce`):
// merges the head's used splits (slots [first,
// first + count) over a row of `len` keys) for the batch's heads and writes their outputs. Thread
// (r, c, column) folds splits r, r + rows, … of head c's 4 dimensions `column` with a running maximum;
// then row 0 merges the rows through workgroup memory (`exchange`: sums at [tid], (max, sum) at
// [ATTEND_THREADS + tid]). Every thread of the workgroup must call it.
fn merge_splits(
  first: u32,
  count: u32,
  len: u32,
  first_local: u32,
  first_head: u32,
  batch_heads: u32,
  tid: u32,
) {
  let group = q_heads / kv_heads;
  let used = used_slots(count, len);
  let columns = head_dim / 4u;
  let pairs = HEADS_PER_BATCH * columns;
  let rows = ATTEND_THREADS / pairs;
  let p = tid % pairs;
  let r = tid / pairs;
  let c = p / columns;
  let column = p % columns;
  let stats = SLOTS * group * head_dim;
  var m = MASKED;
  var acc = vec4f(0.0);
  var total = 0.0;
  if (r < rows && c < batch_heads) {
    for (var s0 = r; s0 < used; s0 += MERGE_UNROLL * rows) {
      var split_max: array<f32, MERGE_UNROLL>;
      var split_sum: array<f32, MERGE_UNROLL>;
      var split_v: array<vec4f, MERGE_UNROLL>;
      // @unroll
      for (var k = 0u; k < MERGE_UNROLL; k++) {
        let valid = s0 + k * rows < used;
        let at = (first + min(s0 + k * rows, used - 1u)) * group + first_local + c;
        split_max[k] = select(MASKED, partials[stats + at * 2u], valid);
        split_sum[k] = select(0.0, partials[stats + at * 2u + 1u], valid);
        let o = at * head_dim + column * 4u;
        split_v[k] = select(vec4f(0.0), vec4f(partials[o], partials[o + 1u], partials[o + 2u], partials[o + 3u]), valid);
      }
      var new_max = m;
      // @unroll
      for (var k = 0u; k < MERGE_UNROLL; k++) { new_max = max(new_max, split_max[k]); }
      let a = exp(m - new_max);
      acc *= a;
      total *= a;
      // @unroll
      for (var k = 0u; k < MERGE_UNROLL; k++) {
        let w = exp(split_max[k] - new_max);
        acc += w * split_v[k];
        total += w * split_sum[k];
      }
      m = new_max;
    }
  }
  exchange[tid] = acc;
  exchange[ATTEND_THREADS + tid] = vec4f(m, total, 0.0, 0.0);
  workgroupBarrier();
  if (r == 0u && c < batch_heads) {
    var m_all = m;
    for (var i = 1u; i < rows; i++) { m_all = max(m_all, exchange[ATTEND_THREADS + i * pairs + p].x); }
    var a = vec4f(0.0);
    var t = 0.0;
    for (var i = 0u; i < rows; i++) {
      let e = exchange[ATTEND_THREADS + i * pairs + p];
      let w = exp(e.x - m_all);
      a += w * exchange[i * pairs + p];
      t += w * e.y;
    }
    let inv = select(0.0, 1.0 / t, t > 0.0);
    let o = (first_head + c) * head_dim + column * 4u;
    for (var j = 0u; j < 4u; j++) { out[o + j] = a[j] * inv; }
  }
}

// The split path's merge as a dispatch of its own (fused_reduce = 0). Grid: (kv_heads, head batches), the
// same merge as the fused reduce's last workgroup (merge_splits()).
@compute @workgroup_size(ATTEND_THREADS)
fn reduce(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let kv_head = wg.x;
  let group = q_heads / kv_heads;
  let first_local = wg.y * HEADS_PER_BATCH;
  let base_row = (sequence.slot * layers + layer_params.layer) * kv_heads;
  stage_head_lengths(base_row, tid, ATTEND_THREADS);
  let plan = plan_slots(kv_head, SLOTS);
  merge_splits(
    plan.head_first,
    plan.head_count,
    head_lengths[kv_head],
    first_local,
    kv_head * group + first_local,
    min(HEADS_PER_BATCH, group - first_local),
    tid,
  );
  att_int8_out(kv_head * group + first_local, min(HEADS_PER_BATCH, group - first_local), tid);
}

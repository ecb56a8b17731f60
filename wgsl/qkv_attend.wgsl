// Attention tail of wgsl/matvec_fast.wgsl's `qkv` entry (its text define ATTEND when attend = 1, from
// src/gpu/ops/qkv_attend.ts, always with the KV store of wgsl/qkv_kv_store.wgsl): decode of one token over
// short rows without an attention dispatch. Each workgroup counts the row groups it finishes per KV head
// (the head's Q rows, then its K and V rows); the last one to finish a head's row groups attends for that
// head, over its whole row of the cache (the current token's K and V included, which the K and V
// workgroups have just stored), with the tiles and the key lanes' merge of wgsl/decode_attend.wgsl, and
// writes the head's query heads' outputs. storageBarrier() orders a workgroup's Q rows and KV pages before
// its count (release) and the count before the last one's reads (acquire), as the fused split merge of
// wgsl/flash_decode.wgsl does; nothing waits on another workgroup. The last arrival resets its counter, so
// the counters are zero between dispatches and one buffer serves every layer.
//
// binding 18: attend_out, f32[q_heads * head_dim] (read_write): the attention output of the step's token
// binding 19: attend_arrivals, atomic<u32>[kv_heads] (read_write): row groups of each KV head finished in
//             this dispatch (zero between dispatches)
// (The Q rows come from y_a, the row lengths and block table from the KV store's bindings 16 and 17, the
// pages from its pool shards.)

override k_quads: u32 = 8u; // head_dim / 8: 16-byte words per K row
override key_lanes: u32 = 8u; // wg_size / k_quads: every thread of the workgroup attends
override tile_steps: u32 = 4u; // steps per tile: keys per tile = tile_steps * key_lanes
override attend_scale: f32 = 0.125; // 1 / sqrt(head_dim)

@group(0) @binding(18) var<storage, read_write> attend_out: array<f32>;
@group(0) @binding(19) var<storage, read_write> attend_arrivals: array<atomic<u32>>;

var<workgroup> attend_last: u32; // 1 in the workgroup that finished a head's last row group
var<workgroup> attend_len: u32; // that head's row length

// Every key of the row is visible (a plain causal cache; the row ends at the current token).
fn key_visible(row: u32, k_index: u32) -> bool {
  return true;
}

// Query head `head`'s value at dimension d (after RoPE, token 0 of the step), scaled.
fn attend_query(head: u32, d: u32) -> f32 {
  return y_a[head * head_dim + d] * attend_scale;
}

fn attend_store(index: u32, value: f32) {
  attend_out[index] = value;
}

{{DECODE_ATTEND}}

// After row group `row0` of weight `weight` (0 Q, 1 K, 2 V; its outputs and pages written): counts it for
// its KV head and, in the workgroup that finishes the head's last row group, attends for the head. Every
// thread of the workgroup must call it.
fn attend_after_group(weight: u32, row0: u32, tid: u32) {
  let q_rows = rows_a / kv_heads; // Q rows per KV head
  let kv_head = select(row0 / head_dim, row0 / q_rows, weight == 0u);
  let groups_per_head = (q_rows + 2u * head_dim) / rows_per_wg;
  storageBarrier(); // release: this workgroup's Q rows and pages before its count
  if (tid == 0u) {
    attend_last = select(0u, 1u, atomicAdd(&attend_arrivals[kv_head], 1u) + 1u == groups_per_head);
  }
  if (workgroupUniformLoad(&attend_last) == 0u) { return; }
  storageBarrier(); // acquire: the other workgroups' rows and pages after their counts
  let row = (kv_sequence.slot * layers + kv_layer.layer) * kv_heads + kv_head;
  if (tid == 0u) {
    atomicStore(&attend_arrivals[kv_head], 0u);
    attend_len = lengths[row];
  }
  let len = workgroupUniformLoad(&attend_len);
  let tiles = (len + TILE_KEYS - 1u) / TILE_KEYS;
  let group = q_rows / head_dim;
  for (var first_local = 0u; first_local < group; first_local += HEADS_PER_BATCH) {
    let first_head = kv_head * group + first_local;
    let batch_heads = min(HEADS_PER_BATCH, group - first_local);
    let qd = attend_queries(first_head, batch_heads, tid % k_quads);
    let state = attend_merge_lanes(attend_tiles(row, 0u, len, tiles, 0u, qd, tid), key_lanes, tid);
    if (tid < k_quads) { attend_write_out(state, first_head, batch_heads, tid); }
    workgroupBarrier(); // the next batch's tiles overwrite `exchange`
  }
}

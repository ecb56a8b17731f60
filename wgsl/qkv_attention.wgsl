// Decode attention folded into wgsl/matvec_fast.wgsl's `qkv` entry (its text define QKV_ATTENTION when
// fuse_attention = 1, from src/gpu/ops/qkv_attention.ts), for short rows of the full cache: the workgroup
// that finishes the last row group of a KV head (its query heads' Q rows, its K and V rows, all counted in
// `attn_arrivals`) attends that head's query heads over the whole row, the key just stored included, and
// writes their outputs, so decode needs no attention dispatch. The pattern of flash_decode's fused split
// merge: storageBarrier() orders the row group's writes (Q rows, K and V pages) before its arrival and the
// arrivals before the last workgroup's reads (wgpu lowers it with device scope). Spliced below
// wgsl/qkv_kv_store.wgsl, whose bindings it reads (kv_sequence, kv_layer, block_table, pool shards as u32
// words), with wgsl/decode_attend.wgsl (key_lanes · k_quads = wg_size) included after it. One token per
// step (decode), every row holding positions 0 … pos0.
//
// binding 18: attn_out, f32[attn_q_heads * head_dim] (write): the normalised attention outputs
// binding 19: attn_arrivals, atomic<u32>[kv_heads] (read-write): row groups of each KV head written in this
//             dispatch; zero between dispatches (the last arrival resets it), so one buffer serves every
//             layer

override attn_q_heads: u32 = 1u;
override attn_scale: f32 = 0.125;
override k_quads: u32 = 8u; // head_dim / 8
override key_lanes: u32 = 16u; // wg_size / k_quads
override tile_steps: u32 = 4u;

@group(0) @binding(18) var<storage, read_write> attn_out: array<f32>;
@group(0) @binding(19) var<storage, read_write> attn_arrivals: array<atomic<u32>>;

var<workgroup> attn_last: u32;

// decode_attend's inputs: every key of the row is seen; the queries are this dispatch's Q rows (RoPE
// applied), scaled.
fn key_visible(row: u32, k_index: u32) -> bool {
  return true;
}

fn attend_query(head: u32, d: u32) -> f32 {
  return y_a[head * head_dim + d] * attn_scale;
}

fn attend_store(index: u32, value: f32) {
  attn_out[index] = value;
}

// Counts row group (weight, row0) for its KV head; the workgroup completing the head attends its query
// heads (in batches of HEADS_PER_BATCH) over keys 0 … pos0. Every thread of the workgroup must call it.
fn qkv_attention_arrive(weight: u32, row0: u32, tid: u32) {
  let group = attn_q_heads / kv_heads;
  var kv_head = row0 / head_dim;
  if (weight == 0u) { kv_head /= group; }
  let per_head = (group + 2u) * head_dim / rows_per_wg;
  storageBarrier(); // release: this row group's outputs and pages before its arrival
  if (tid == 0u) {
    attn_last = select(0u, 1u, atomicAdd(&attn_arrivals[kv_head], 1u) + 1u == per_head);
  }
  if (workgroupUniformLoad(&attn_last) == 0u) { return; }
  storageBarrier(); // acquire: the head's other row groups after their arrivals
  if (tid == 0u) { atomicStore(&attn_arrivals[kv_head], 0u); }
  let row = (kv_sequence.slot * layers + kv_layer.layer) * kv_heads + kv_head;
  let len = step.pos0 + 1u;
  let tiles = (len + TILE_KEYS - 1u) / TILE_KEYS;
  let lane = tid % k_quads;
  for (var first_local = 0u; first_local < group; first_local += HEADS_PER_BATCH) {
    let first_head = kv_head * group + first_local;
    let batch_heads = min(HEADS_PER_BATCH, group - first_local);
    let state = attend_tiles(row, 0u, len, tiles, 0u, attend_queries(first_head, batch_heads, lane), tid);
    let merged = attend_merge_lanes(state, key_lanes, tid);
    if (tid < k_quads) { attend_write_out(merged, first_head, batch_heads, lane); }
    workgroupBarrier(); // the merge's last reads of `exchange` before the next batch's tiles
  }
}

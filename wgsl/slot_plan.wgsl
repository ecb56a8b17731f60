// Work shared out among the KV heads of one (sequence, layer) in proportion to their lengths, for the
// attention kernels (wgsl/flash_decode.wgsl, wgsl/flash_prefill.wgsl), which include it with a line
// `// #include slot_plan`. The including shader declares `kv_heads`, `PAGE_TOKENS`, `SLOTS` (the
// workgroup slots to share out) and `lengths: array<u32>` (row lengths, see its binding comment).
//
// WG-KV heads keep very different numbers of keys, so a grid with the same share of workgroups per head
// would wait for the longest head; giving each head slots in proportion to its pages lets them finish
// together.

fn pages_of(len: u32) -> u32 {
  return (len + PAGE_TOKENS - 1u) / PAGE_TOKENS;
}

// Row lengths of the KV heads of this sequence and layer, staged by stage_head_lengths().
var<workgroup> head_lengths: array<u32, kv_heads>;

// Stages the row lengths of the KV heads (rows base_row + h) in workgroup memory, in parallel; every thread
// of the workgroup must call it.
fn stage_head_lengths(base_row: u32, tid: u32, threads: u32) {
  for (var h = tid; h < kv_heads; h += threads) { head_lengths[h] = lengths[base_row + h]; }
  workgroupBarrier();
}

// The slot boundaries, from the staged lengths: boundary(h) = (heads with pages among 0..h) +
// floor(spare · pages(0..h) / all pages), with spare = SLOTS − heads with pages, so every head with pages gets
// one slot or more and the last boundary is SLOTS. (The host keeps spare · all pages below 2^32.) Returns
// (first slot, count) of `kv_head` and the head whose slots include `slot` (0 slots for both when no head
// has pages).
struct SlotPlan {
  head_first: u32,
  head_count: u32,
  owner: u32,
  owner_first: u32,
  owner_count: u32,
}
fn plan_slots(kv_head: u32, slot: u32) -> SlotPlan {
  var plan = SlotPlan(0u, 0u, 0u, 0u, 0u);
  var total = 0u;
  var nonempty = 0u;
  for (var h = 0u; h < kv_heads; h++) {
    let p = pages_of(head_lengths[h]);
    total += p;
    nonempty += select(0u, 1u, p > 0u);
  }
  if (total == 0u) { return plan; }
  let spare = SLOTS - nonempty;
  var cum = 0u;
  var seen = 0u;
  for (var h = 0u; h < kv_heads; h++) {
    let first = seen + spare * cum / total;
    let p = pages_of(head_lengths[h]);
    cum += p;
    seen += select(0u, 1u, p > 0u);
    let end = seen + spare * cum / total;
    if (h == kv_head) {
      plan.head_first = first;
      plan.head_count = end - first;
    }
    if (slot >= first && slot < end) {
      plan.owner = h;
      plan.owner_first = first;
      plan.owner_count = end - first;
    }
  }
  return plan;
}

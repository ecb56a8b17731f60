// add_partial and gather_subgroup_sums for wgsl/matvec_fast.wgsl with subgroup_reduce = 1, on subgroups:
// each value is summed over its subgroup (subgroup_size consecutive invocations; wg_size a multiple of it,
// checked by src/gpu/ops/matvec_units.ts) and the subgroup's first invocation stores the sum at
// partial[subgroup · n + j], so reduce() only adds wg_size / subgroup_size sums per value. The device must
// have been opened with the `subgroups` feature.

fn add_partial(tid: u32, n: u32, j: u32, value: f32) {
  let total = subgroupAdd(value);
  if (tid % subgroup_size == 0u) { partial[(tid / subgroup_size) * n + j] = total; }
}

// (The sums are in place already.)
fn gather_subgroup_sums(tid: u32, n: u32) {}

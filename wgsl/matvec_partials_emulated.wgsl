// add_partial and gather_subgroup_sums for wgsl/matvec_fast.wgsl with subgroup_reduce = 1 on a GPU without
// subgroups (tests): the values wait in lane_values, and gather_subgroup_sums adds each "subgroup" of
// subgroup_size consecutive invocations into partial[subgroup · n + j], as wgsl/matvec_partials.wgsl's
// subgroup sums leave them. Every thread of the workgroup must call gather_subgroup_sums (one barrier).

// Value j of thread tid at tid · n + j.
var<workgroup> lane_values: array<f32, wg_size * (rows_per_wg * slots + 1u) * tokens_per_wg>;

fn add_partial(tid: u32, n: u32, j: u32, value: f32) {
  lane_values[tid * n + j] = value;
}

fn gather_subgroup_sums(tid: u32, n: u32) {
  workgroupBarrier();
  for (var i = tid; i < (wg_size / subgroup_size) * n; i += wg_size) {
    let first = (i / n) * subgroup_size;
    var s = 0.0;
    for (var l = 0u; l < subgroup_size; l++) { s += lane_values[(first + l) * n + i % n]; }
    partial[i] = s;
  }
}

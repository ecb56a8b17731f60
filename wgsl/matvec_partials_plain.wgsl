// add_partial and gather_subgroup_sums for wgsl/matvec_fast.wgsl with subgroup_reduce = 0 (the default):
// each value goes to partial[tid · n + j] as it is, and reduce() adds all wg_size of them.

fn add_partial(tid: u32, n: u32, j: u32, value: f32) {
  partial[tid * n + j] = value;
}

fn gather_subgroup_sums(tid: u32, n: u32) {}

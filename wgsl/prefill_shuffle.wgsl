// row_shuffle_xor for wgsl/flash_prefill.wgsl with subgroup_max = 1, on subgroups: the value `v` of the
// invocation whose index differs from this one's in the bits of `mask` (below 8: the lanes of one row
// quad, which must lie in one subgroup of consecutive invocations; checked by src/gpu/ops/attention.ts).
// The device must have been opened with the `subgroups` feature.

fn row_shuffle_xor(v: vec4f, mask: u32, tid: u32) -> vec4f {
  return subgroupShuffleXor(v, mask);
}

// shuffle_xor for the attention kernels' subgroup paths (wgsl/decode_attend.wgsl with subgroup_dots = 1,
// wgsl/flash_prefill.wgsl with subgroup_max = 1), on subgroups: the value `v` of the invocation whose index
// differs from this one's in the bits of `mask`. The invocations exchanging values must lie in one subgroup
// of consecutive invocations (masks below the subgroup size, checked by src/gpu/ops/attention.ts). The
// device must have been opened with the `subgroups` feature (wgpu's WGSL takes the builtins without an
// `enable subgroups;` directive, which its compiler refuses).

fn shuffle_xor(v: vec4f, mask: u32, tid: u32) -> vec4f {
  return subgroupShuffleXor(v, mask);
}

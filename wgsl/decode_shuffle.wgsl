// attend_shuffle_xor for wgsl/decode_attend.wgsl with subgroup operations on (subgroup_dots = 1): the value
// `v` of the invocation whose index differs from this one's in the bits of `mask`, by a subgroup shuffle.
// The invocations exchanging values must lie in one subgroup: masks below the subgroup size, with the
// workgroup's invocations in whole subgroups of consecutive indices (checked by src/gpu/ops/attention.ts).
// The device must have been opened with the `subgroups` feature (wgpu's WGSL takes the builtins without an
// `enable subgroups;` directive, which it refuses).

fn attend_shuffle_xor(v: vec4f, mask: u32, tid: u32) -> vec4f {
  return subgroupShuffleXor(v, mask);
}

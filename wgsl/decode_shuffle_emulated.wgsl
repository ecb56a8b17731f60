// attend_shuffle_xor for wgsl/decode_attend.wgsl with subgroup operations on a GPU without subgroups
// (tests): the same exchange as wgsl/decode_shuffle.wgsl, through workgroup memory. Every thread of the
// workgroup must call it (two barriers).

// Thread tid's value at tid.
var<workgroup> shuffle_values: array<vec4f, ATTEND_THREADS>;

fn attend_shuffle_xor(v: vec4f, mask: u32, tid: u32) -> vec4f {
  shuffle_values[tid] = v;
  workgroupBarrier();
  let other = shuffle_values[tid ^ mask];
  workgroupBarrier();
  return other;
}

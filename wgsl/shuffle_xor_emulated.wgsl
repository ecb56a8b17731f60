// shuffle_xor for the attention kernels' subgroup paths on a GPU without subgroups (tests): the same
// exchange as wgsl/shuffle_xor.wgsl, through workgroup memory. The including kernel declares
// SHUFFLE_THREADS, its workgroup size. Every thread of the workgroup must call it (two barriers).

// Thread tid's value at tid.
var<workgroup> shuffle_values: array<vec4f, SHUFFLE_THREADS>;

fn shuffle_xor(v: vec4f, mask: u32, tid: u32) -> vec4f {
  shuffle_values[tid] = v;
  workgroupBarrier();
  let other = shuffle_values[tid ^ mask];
  workgroupBarrier();
  return other;
}

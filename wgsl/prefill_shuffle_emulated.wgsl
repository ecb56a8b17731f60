// row_shuffle_xor for wgsl/flash_prefill.wgsl with subgroup_max = 1 on a GPU without subgroups (tests): the
// same exchange as wgsl/prefill_shuffle.wgsl, through workgroup memory. Every thread of the workgroup must
// call it (two barriers).

// Thread tid's value at tid.
var<workgroup> row_shuffle_values: array<vec4f, THREADS>;

fn row_shuffle_xor(v: vec4f, mask: u32, tid: u32) -> vec4f {
  row_shuffle_values[tid] = v;
  workgroupBarrier();
  let other = row_shuffle_values[tid ^ mask];
  workgroupBarrier();
  return other;
}

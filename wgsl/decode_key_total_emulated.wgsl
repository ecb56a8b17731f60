// attend_key_total for wgsl/decode_attend.wgsl with subgroup_dots = 1 on a GPU without subgroups (tests):
// the same sums as wgsl/decode_key_total.wgsl, through workgroup memory. Every thread of the workgroup
// must call it (two barriers).

// Thread tid's partial dot products (vec4 over the batch's heads) at tid.
var<workgroup> key_partials: array<vec4f, ATTEND_THREADS>;

fn attend_key_total(dot: vec4f, tid: u32) -> vec4f {
  key_partials[tid] = dot;
  workgroupBarrier();
  let first = tid - tid % k_quads;
  var s = vec4f(0.0);
  for (var p = 0u; p < k_quads; p++) { s += key_partials[first + p]; }
  workgroupBarrier();
  return s;
}

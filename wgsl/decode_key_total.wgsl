// attend_key_total for wgsl/decode_attend.wgsl with subgroup_dots = 1, on subgroups: the whole dot products
// (vec4 over the batch's heads) of this thread's key, summed over the key's k_quads consecutive threads by
// a butterfly of subgroup shuffles, so every thread of the key gets the total. The key's threads must lie
// in one subgroup, consecutive and aligned (k_quads a power of two no larger than the subgroup: checked
// by src/gpu/ops/attention.ts). The device must have been opened with the `subgroups` feature (wgpu's
// WGSL takes the builtins without an `enable subgroups;` directive, which it refuses).

fn attend_key_total(dot: vec4f, tid: u32) -> vec4f {
  var s = dot;
  for (var m = 1u; m < k_quads; m <<= 1u) { s += subgroupShuffleXor(s, m); }
  return s;
}

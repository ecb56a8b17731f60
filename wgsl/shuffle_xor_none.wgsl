// shuffle_xor for the attention kernels with their subgroup paths off (subgroup_dots = 0, subgroup_max = 0):
// never called, so it only has to compile.

fn shuffle_xor(v: vec4f, mask: u32, tid: u32) -> vec4f {
  return v;
}

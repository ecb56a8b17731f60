// Buffer copy used to measure the device's achievable memory bandwidth: dst[i] = src[i].
// Each invocation moves one vec4<u32> (16 bytes); the grid is 2-D so very large buffers fit.
//
// binding 0: src, vec4<u32>[n] (read)
// binding 1: dst, vec4<u32>[n] (write)

override N: u32 = 0u;
override WG: u32 = 256u;
override ROW: u32 = 65535u; // workgroups per grid row

@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
  let i = (wg.y * ROW + wg.x) * WG + li;
  if (i < N) { dst[i] = src[i]; }
}

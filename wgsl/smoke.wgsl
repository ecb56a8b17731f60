// Smoke kernel used by the device-layer test: out[i] = a[i] * scale + i.
// binding 0: a, f32[n] (read)     binding 1: out, f32[n] (write)
override scale: f32 = 1.0;
override n: u32 = 0u;
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u) {
  if (id.x < n) { out[id.x] = a[id.x] * scale + f32(id.x); }
}

// Probe kernel of bench/dispatch.ts: out[i] = a[i] · scale + i, each value staged through workgroup memory
// of `shared_floats` floats (the first 64 used), so pipelines can differ in their workgroup memory as the
// model's kernels do. Different `scale` or `shared_floats` constants make different pipelines.
// binding 0: a, f32[n] (read)     binding 1: out, f32[n] (write)
override scale: f32 = 1.0;
override n: u32 = 0u;
override shared_floats: u32 = 64u; // at least 64
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
var<workgroup> stage: array<f32, shared_floats>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3u, @builtin(local_invocation_index) lid: u32) {
  stage[lid] = select(0.0, a[id.x], id.x < n);
  workgroupBarrier();
  if (id.x < n) { out[id.x] = stage[lid] * scale + f32(id.x); }
}

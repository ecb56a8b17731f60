// Probe kernel of bench/dispatch.ts: out[i] = a[i] · scale + i, each value staged through workgroup memory
// of `shared_floats` floats (the first 64 used), so pipelines can differ in their workgroup memory as the
// model's kernels do. Different `scale` or `shared_floats` constants make different pipelines. Entry `wide`
// does the same while binding 12 more read-only buffers (as a model kernel binds its weights, cache pages,
// tables and parameters), each read by a thread that never sees its value used.
// binding 0: a, f32[n] (read)     binding 1: out, f32[n] (write)
// bindings 2…13: extra, f32[≥ 1] each (read; entry `wide` only)
// Entry `long_code` does the same after a chain of code_steps FMAs unrolled into straight-line code (about
// 16 bytes of machine code each), so pipelines can differ in code size as the model's kernels do.
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

@group(0) @binding(2) var<storage, read> extra_0: array<f32>;
@group(0) @binding(3) var<storage, read> extra_1: array<f32>;
@group(0) @binding(4) var<storage, read> extra_2: array<f32>;
@group(0) @binding(5) var<storage, read> extra_3: array<f32>;
@group(0) @binding(6) var<storage, read> extra_4: array<f32>;
@group(0) @binding(7) var<storage, read> extra_5: array<f32>;
@group(0) @binding(8) var<storage, read> extra_6: array<f32>;
@group(0) @binding(9) var<storage, read> extra_7: array<f32>;
@group(0) @binding(10) var<storage, read> extra_8: array<f32>;
@group(0) @binding(11) var<storage, read> extra_9: array<f32>;
@group(0) @binding(12) var<storage, read> extra_10: array<f32>;
@group(0) @binding(13) var<storage, read> extra_11: array<f32>;

@compute @workgroup_size(64)
fn wide(@builtin(global_invocation_id) id: vec3u, @builtin(local_invocation_index) lid: u32) {
  var v = select(0.0, a[id.x], id.x < n);
  // Thread n + 1 (never launched within the n values' grid rounded to 64 unless n + 1 is below it) adds
  // the extra buffers' first values: the reads stay in the kernel, their value almost never counts.
  if (id.x == n + 1u) {
    v += extra_0[0] + extra_1[0] + extra_2[0] + extra_3[0] + extra_4[0] + extra_5[0] + extra_6[0] +
      extra_7[0] + extra_8[0] + extra_9[0] + extra_10[0] + extra_11[0];
  }
  stage[lid] = v;
  workgroupBarrier();
  if (id.x < n) { out[id.x] = stage[lid] * scale + f32(id.x); }
}

// Steps of `long_code`'s unrolled FMA chain.
override code_steps: u32 = 1024u;

@compute @workgroup_size(64)
fn long_code(@builtin(global_invocation_id) id: vec3u, @builtin(local_invocation_index) lid: u32) {
  var v = select(0.0, a[id.x], id.x < n);
  var w = v + 1.0;
  // @unroll
  for (var i = 0u; i < code_steps; i++) {
    v = fma(v, 0.5, f32(i) * 0.001);
    w = fma(w, 0.25, f32(i) * 0.002);
  }
  stage[lid] = v + w;
  workgroupBarrier();
  if (id.x < n) { out[id.x] = stage[lid] * scale + f32(id.x); }
}

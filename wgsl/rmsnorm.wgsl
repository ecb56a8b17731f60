// RMSNorm over rows of an f32 activation matrix: y[t] = x[t] / sqrt(mean(x[t]²) + eps) · w, one
// workgroup per token row t. Rows t >= step.nTokens are skipped, so the same dispatch (sized for the
// largest batch) serves prefill and decode.
//
// Entry points:
//   main       binding 0: x, f32[maxTokens][width] (read)
//              binding 1: w, f32[width] (read)
//              binding 2: y, f32[maxTokens][width] (write)
//              binding 3: step, uniform Step
//   add_norm   binding 0: x, f32[maxTokens][width] (read_write): the residual stream, x += r in place
//              binding 1: r, f32 (read): what is added to the residual, [nTokens][width], or in
//                         residual_parts parts that add up (a split-K product's, wgsl/matmul.wgsl: part p
//                         at p · (nTokens · width + SPLIT_SKEW))
//              binding 2: w, f32[width] (read)
//              binding 3: y, f32[maxTokens][width] (write): rmsnorm(x + r) · w
//              binding 4: step, uniform Step
//
// Each invocation keeps its per_thread strided values of the row in registers (elements lane + k · WG),
// loading them all before any arithmetic, so a row costs about one memory latency rather than one per
// element; the sum of squares is then folded by a tree in workgroup memory (no subgroup operations).

override width: u32 = 1u;
override eps: f32 = 1e-5;
override WG: u32 = 256u;
override per_thread: u32 = 1u; // ceil(width / WG)
override residual_parts: u32 = 1u; // add_norm: parts of r (see binding 1)
const SPLIT_SKEW: u32 = 64u; // floats between parts, as wgsl/matmul.wgsl writes them

struct Step { nTokens: u32, pos0: u32, _pad0: u32, _pad1: u32 }

var<workgroup> partial: array<f32, WG>;

// Folds `partial` to partial[0]; every invocation of the workgroup must call it.
fn reduce_sum(lane: u32) -> f32 {
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    workgroupBarrier();
    if (lane < stride) { partial[lane] += partial[lane + stride]; }
  }
  workgroupBarrier();
  return partial[0];
}

@group(0) @binding(0) var<storage, read> x_in: array<f32>;
@group(0) @binding(1) var<storage, read> w_main: array<f32>;
@group(0) @binding(2) var<storage, read_write> y_main: array<f32>;
@group(0) @binding(3) var<uniform> step_main: Step;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lane: u32) {
  let row = wg.x;
  if (row >= step_main.nTokens) { return; }
  let base = row * width;
  var v: array<f32, per_thread>;
  var ss = 0.0;
  // @unroll
  for (var k = 0u; k < per_thread; k++) {
    let i = lane + k * WG;
    if (i < width) { v[k] = x_in[base + i]; }
  }
  // @unroll
  for (var k = 0u; k < per_thread; k++) { ss += v[k] * v[k]; }
  partial[lane] = ss;
  let scale = 1.0 / sqrt(reduce_sum(lane) / f32(width) + eps);
  // @unroll
  for (var k = 0u; k < per_thread; k++) {
    let i = lane + k * WG;
    if (i < width) { y_main[base + i] = v[k] * scale * w_main[i]; }
  }
}

@group(0) @binding(0) var<storage, read_write> x_res: array<f32>;
@group(0) @binding(1) var<storage, read> r_add: array<f32>;
@group(0) @binding(2) var<storage, read> w_add: array<f32>;
@group(0) @binding(3) var<storage, read_write> y_add: array<f32>;
@group(0) @binding(4) var<uniform> step_add: Step;

@compute @workgroup_size(WG)
fn add_norm(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lane: u32) {
  let row = wg.x;
  if (row >= step_add.nTokens) { return; }
  let base = row * width;
  var v: array<f32, per_thread>;
  var ss = 0.0;
  // @unroll
  for (var k = 0u; k < per_thread; k++) {
    let i = lane + k * WG;
    if (i < width) {
      var r = r_add[base + i];
      for (var p = 1u; p < residual_parts; p++) { r += r_add[p * (step_add.nTokens * width + SPLIT_SKEW) + base + i]; }
      v[k] = x_res[base + i] + r;
    }
  }
  // @unroll
  for (var k = 0u; k < per_thread; k++) {
    let i = lane + k * WG;
    if (i < width) { x_res[base + i] = v[k]; }
    ss += v[k] * v[k];
  }
  partial[lane] = ss;
  let scale = 1.0 / sqrt(reduce_sum(lane) / f32(width) + eps);
  // @unroll
  for (var k = 0u; k < per_thread; k++) {
    let i = lane + k * WG;
    if (i < width) { y_add[base + i] = v[k] * scale * w_add[i]; }
  }
}

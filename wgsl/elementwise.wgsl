// Element-wise kernels over f32 token rows. Invocation (x, y) handles column x of token row y; rows
// y >= step.nTokens are skipped, so one dispatch sized for the largest batch serves every step.
// Inputs may have a row stride larger than WIDTH (e.g. gate and up halves of one fused projection).
//
// Bindings shared by all entry points:
//   binding 2: step, uniform Step
// Entry point `swiglu` (in place, g = silu(g) · u):
//   binding 0: g, f32 rows of IN_STRIDE values (read_write)
//   binding 1: u, f32 rows of IN_STRIDE values (read)
// Entry point `swiglu_out` (out = silu(g) · u; g and u may be views of one buffer):
//   binding 0: g, f32 rows of IN_STRIDE values (read)
//   binding 1: u, f32 rows of IN_STRIDE values (read)
//   binding 3: out, f32[maxTokens][WIDTH] (write)
// Entry point `add` (x += y):
//   binding 0: x, f32[maxTokens][WIDTH] (read_write)
//   binding 1: y, f32[maxTokens][WIDTH] (read)

override WIDTH: u32 = 1u;
override IN_STRIDE: u32 = 1u;
override WG: u32 = 256u;

struct Step { nTokens: u32, pos0: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(2) var<uniform> step: Step;

fn silu(v: f32) -> f32 {
  return v / (1.0 + exp(-v));
}

@group(0) @binding(0) var<storage, read_write> g_inout: array<f32>;
@group(0) @binding(1) var<storage, read> u_in: array<f32>;

@compute @workgroup_size(WG)
fn swiglu(@builtin(global_invocation_id) id: vec3u) {
  if (id.y >= step.nTokens || id.x >= WIDTH) { return; }
  let i = id.y * IN_STRIDE + id.x;
  g_inout[i] = silu(g_inout[i]) * u_in[i];
}

@group(0) @binding(0) var<storage, read> g_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn swiglu_out(@builtin(global_invocation_id) id: vec3u) {
  if (id.y >= step.nTokens || id.x >= WIDTH) { return; }
  let i = id.y * IN_STRIDE + id.x;
  out[id.y * WIDTH + id.x] = silu(g_in[i]) * u_in[i];
}

@group(0) @binding(0) var<storage, read_write> x_acc: array<f32>;

@compute @workgroup_size(WG)
fn add(@builtin(global_invocation_id) id: vec3u) {
  if (id.y >= step.nTokens || id.x >= WIDTH) { return; }
  let i = id.y * WIDTH + id.x;
  x_acc[i] += u_in[i];
}

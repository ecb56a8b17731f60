// Copies the last token row of a batch: dst[c] = src[(step.nTokens - 1) * WIDTH + c].
// Used to hand only the last prompt token to the output projection after a prefill.
//
// binding 0: src,  f32[maxTokens][WIDTH] (read)
// binding 1: dst,  f32[WIDTH] (write)
// binding 2: step, uniform Step { nTokens, pos0, _, _ } (only nTokens is read)

override WIDTH: u32 = 64u;
override WG: u32 = 256u;

struct Step { n_tokens: u32, pos0: u32, pad0: u32, pad1: u32 }

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> step: Step;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3u) {
  let c = id.x;
  if (c >= WIDTH) { return; }
  dst[c] = src[(step.n_tokens - 1u) * WIDTH + c];
}

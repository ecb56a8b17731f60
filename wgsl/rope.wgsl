// Rotary position embedding, GGUF `llama` layout: within each head of HEAD_DIM values the adjacent pairs
// (2i, 2i+1) for 2i < ROPE_DIM are rotated by the angle pos · invFreq[i], where pos = step.pos0 + t for
// token row t. Q heads and K heads are rotated by the same dispatch: invocation (x, y) handles pair
// x % N_PAIRS of head x / N_PAIRS (Q heads first, then K heads) of token row y. Rows t >= step.nTokens
// are skipped.
//
// The angle is range-reduced exactly before sin/cos (whose accuracy is only promised on [-π, π]):
// the table holds, per pair, invFreq[i] / 2π (the angle in turns per position) split on the CPU into
// N_CHUNKS parts of few enough significant bits that pos · part is exact in f32 for every pos below the
// op's maxPosition. The fractional parts of those exact products sum to the fractional turn of the
// angle to within a few f32 ulps, independent of how large pos is.
//
// Bindings (both entry points):
//   binding 0: turns, f32[N_PAIRS][N_CHUNKS] (read): the split turns-per-position table
//   binding 1: step, uniform Step
// Entry point `main`:
//   binding 2: q, f32 rows of Q_STRIDE values (read_write), Q head h at column Q_COL + h·HEAD_DIM
//   binding 3: k, f32 rows of K_STRIDE values (read_write), K head h at column K_COL + h·HEAD_DIM
// Entry point `packed` (Q and K in the same rows of one buffer):
//   binding 2: qk, f32 rows (read_write), Q heads as q above, K heads as k above

override HEAD_DIM: u32 = 64u;
override N_PAIRS: u32 = 32u; // ROPE_DIM / 2
override N_CHUNKS: u32 = 1u;
override N_Q_HEADS: u32 = 1u;
override N_K_HEADS: u32 = 0u;
override Q_STRIDE: u32 = 64u;
override Q_COL: u32 = 0u;
override K_STRIDE: u32 = 64u;
override K_COL: u32 = 0u;
override WG: u32 = 64u;

struct Step { nTokens: u32, pos0: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<storage, read> turns: array<f32>;
@group(0) @binding(1) var<uniform> step: Step;

// rope_rotation(pos, pair, chunks): (cos, sin) of the angle of `pair` at position `pos`.
// #include rope_angle

// Index of element 2·pair of head `head` (Q heads first, then K heads) in token row t.
fn pair_index(t: u32, head: u32, pair: u32) -> u32 {
  if (head < N_Q_HEADS) { return t * Q_STRIDE + Q_COL + head * HEAD_DIM + 2u * pair; }
  return t * K_STRIDE + K_COL + (head - N_Q_HEADS) * HEAD_DIM + 2u * pair;
}

fn rotate(v: vec2f, cs: vec2f) -> vec2f {
  return vec2f(v.x * cs.x - v.y * cs.y, v.x * cs.y + v.y * cs.x);
}

@group(0) @binding(2) var<storage, read_write> q: array<f32>;
@group(0) @binding(3) var<storage, read_write> k: array<f32>;

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) id: vec3u) {
  let t = id.y;
  let head = id.x / N_PAIRS;
  let pair = id.x % N_PAIRS;
  if (t >= step.nTokens || head >= N_Q_HEADS + N_K_HEADS) { return; }
  let cs = rope_rotation(step.pos0 + t, pair, N_CHUNKS);
  let i = pair_index(t, head, pair);
  if (head < N_Q_HEADS) {
    let r = rotate(vec2f(q[i], q[i + 1u]), cs);
    q[i] = r.x;
    q[i + 1u] = r.y;
  } else {
    let r = rotate(vec2f(k[i], k[i + 1u]), cs);
    k[i] = r.x;
    k[i + 1u] = r.y;
  }
}

@group(0) @binding(2) var<storage, read_write> qk: array<f32>;

@compute @workgroup_size(WG)
fn packed(@builtin(global_invocation_id) id: vec3u) {
  let t = id.y;
  let head = id.x / N_PAIRS;
  let pair = id.x % N_PAIRS;
  if (t >= step.nTokens || head >= N_Q_HEADS + N_K_HEADS) { return; }
  let cs = rope_rotation(step.pos0 + t, pair, N_CHUNKS);
  let i = pair_index(t, head, pair);
  let r = rotate(vec2f(qk[i], qk[i + 1u]), cs);
  qk[i] = r.x;
  qk[i + 1u] = r.y;
}

// Write gate (WG-KV admission predictor): for every token of the step and every KV head, a tiny MLP on
// the key decides whether the token is kept beyond the local window.
//   x  = [ rms(pre_k) * pre_norm ; rms(post_k) * post_norm ]      (2 * head_dim, eps 1e-6, norms shared by heads)
//   h1 = gelu_erf(W1[h] x + b1[h])                                (inner values)
//   g  = max(sigmoid(w2[h] . h1 + b2[h]), epsilon)                 score; flag = g > threshold (strict)
//
// binding 0: step, uniform { n_tokens, pos0 } (the op convention's shared StepParams)
// binding 1: layer_params, uniform { layer }: which layer's column of the outputs this op writes
// binding 2: pre_k, f32[n_tokens][kv_heads * head_dim] (read), keys before RoPE
// binding 3: post_k, f32[n_tokens][kv_heads * head_dim] (read), the same keys after RoPE
// binding 4: params, f32 (read), one layer's weights packed by `packGateLayer`:
//            pre_norm[head_dim], post_norm[head_dim],
//            w1t[kv_heads][2 * head_dim][inner] (W1 transposed so that threads of consecutive hidden units
//            read consecutive words), b1[kv_heads][inner], w2[kv_heads][inner], b2[kv_heads]
// binding 5: scores, f32[max_tokens][layers][kv_heads] (write), g after the clamp
// binding 6: flags, u32[max_tokens][layers][kv_heads] (write), 1 when admitted; token-major so that the
//            first n_tokens * layers * kv_heads words are the whole step (one copy for the readback)
//
// Grid: (ceil(max_tokens / TILE), kv_heads). A workgroup takes TILE tokens of one head: it normalises
// their inputs into workgroup memory, then each thread owns hidden units r = tid, tid + 64, ... and
// accumulates TILE dot products at once, so every W1 weight is read once per token tile; the per-thread
// partial logits are summed with a tree reduction.

override head_dim: u32 = 64u;
override kv_heads: u32 = 1u;
override layers: u32 = 1u;
override inner: u32 = 256u;
override threshold: f32 = 0.1;
override epsilon: f32 = 0.001;

const TILE: u32 = 8u;
const THREADS: u32 = 64u;
const RMS_EPS: f32 = 1e-6;

struct Step { n_tokens: u32, pos0: u32, pad0: u32, pad1: u32 }
struct LayerParams { layer: u32, pad0: u32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> layer_params: LayerParams;
@group(0) @binding(2) var<storage, read> pre_k: array<f32>;
@group(0) @binding(3) var<storage, read> post_k: array<f32>;
@group(0) @binding(4) var<storage, read> params: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> flags: array<u32>;

var<workgroup> x_tile: array<f32, TILE * 2u * head_dim>; // normalised inputs, token-major
var<workgroup> inv_rms: array<f32, TILE * 2u>; // [token][pre, post]
var<workgroup> partial: array<f32, TILE * THREADS>; // [token][thread] partial logits

// erf with |error| < 1.5e-7 (Abramowitz & Stegun 7.1.26 rational approximation of erfc on x >= 0,
// mirrored for x < 0); enough for a gate whose output is compared to a threshold.
fn erf_approx(x: f32) -> f32 {
  let a = abs(x);
  let t = 1.0 / (1.0 + 0.3275911 * a);
  let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
  let r = 1.0 - poly * exp(-a * a);
  return select(r, -r, x < 0.0);
}

// Exact (erf) GELU, as torch.nn.GELU() by default.
fn gelu(x: f32) -> f32 {
  return 0.5 * x * (1.0 + erf_approx(x * 0.70710678118654752));
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let head = wg.y;
  let t0 = wg.x * TILE;
  let n_tokens = step.n_tokens;
  if (t0 >= n_tokens) { return; }
  let in_dim = 2u * head_dim;
  let stride = kv_heads * head_dim;

  // Inverse RMS of each (token, input) of the tile.
  if (tid < 2u * TILE) {
    let token = t0 + tid / 2u;
    var sum = 0.0;
    if (token < n_tokens) {
      let base = token * stride + head * head_dim;
      for (var d = 0u; d < head_dim; d++) {
        let v = select(post_k[base + d], pre_k[base + d], tid % 2u == 0u);
        sum += v * v;
      }
    }
    inv_rms[tid] = inverseSqrt(sum / f32(head_dim) + RMS_EPS);
  }
  workgroupBarrier();
  for (var i = tid; i < TILE * in_dim; i += THREADS) {
    let k = i / in_dim;
    let c = i % in_dim;
    let token = t0 + k;
    var v = 0.0;
    if (token < n_tokens) {
      let d = c % head_dim;
      let src = token * stride + head * head_dim + d;
      // params[c] is pre_norm[d] for c < head_dim and post_norm[d] after: the two norms are adjacent.
      if (c < head_dim) {
        v = pre_k[src] * inv_rms[2u * k] * params[c];
      } else {
        v = post_k[src] * inv_rms[2u * k + 1u] * params[c];
      }
    }
    x_tile[i] = v;
  }
  workgroupBarrier();

  let w1_at = in_dim;
  let b1_at = w1_at + kv_heads * in_dim * inner;
  let w2_at = b1_at + kv_heads * inner;
  let b2_at = w2_at + kv_heads * inner;
  var logit: array<f32, TILE>;
  for (var k = 0u; k < TILE; k++) { logit[k] = 0.0; }
  for (var r = tid; r < inner; r += THREADS) {
    var acc: array<f32, TILE>;
    let bias = params[b1_at + head * inner + r];
    for (var k = 0u; k < TILE; k++) { acc[k] = bias; }
    let column = w1_at + head * in_dim * inner + r;
    for (var c = 0u; c < in_dim; c++) {
      let w = params[column + c * inner];
      for (var k = 0u; k < TILE; k++) { acc[k] += w * x_tile[k * in_dim + c]; }
    }
    let w2 = params[w2_at + head * inner + r];
    for (var k = 0u; k < TILE; k++) { logit[k] += w2 * gelu(acc[k]); }
  }
  for (var k = 0u; k < TILE; k++) { partial[k * THREADS + tid] = logit[k]; }
  workgroupBarrier();
  for (var s = THREADS / 2u; s > 0u; s >>= 1u) {
    if (tid < s) {
      for (var k = 0u; k < TILE; k++) { partial[k * THREADS + tid] += partial[k * THREADS + tid + s]; }
    }
    workgroupBarrier();
  }
  if (tid < TILE && t0 + tid < n_tokens) {
    let z = partial[tid * THREADS] + params[b2_at + head];
    let g = max(1.0 / (1.0 + exp(-z)), epsilon);
    let o = ((t0 + tid) * layers + layer_params.layer) * kv_heads + head;
    scores[o] = g;
    flags[o] = select(0u, 1u, g > threshold);
  }
}

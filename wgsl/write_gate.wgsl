// Write gate (WG-KV admission predictor): for every token of the step and every KV head, a tiny MLP on
// the key decides whether the token is kept beyond the local window.
//   x  = [ rms(pre_k) * pre_norm ; rms(post_k) * post_norm ]      (2 * head_dim, eps 1e-6, norms shared by heads)
//   h1 = gelu_erf(W1[h] x + b1[h])                                (inner values; SiLU if activation = 1)
//   g  = clamp(sigmoid(w2[h] . h1 + b2[h]), epsilon, 1)            score; flag = g > threshold (strict)
//
// binding 0: step, uniform { n_tokens, pos0 } (the op convention's shared StepParams)
// binding 1: layer_params, uniform { layer }: which layer's column of the outputs this op writes
// binding 2: pre_k, f32[n_tokens][kv_heads * head_dim] (read), keys before RoPE
// binding 3: post_k, f32[n_tokens][kv_heads * head_dim] (read), the same keys after RoPE
// binding 4: params, f32 (read), one layer's weights packed by `packGateLayer`:
//            pre_norm[head_dim], post_norm[head_dim],
//            w1t[kv_heads][2 * head_dim][inner] (W1 transposed so that threads of consecutive hidden units
//            read consecutive words), b1[kv_heads][inner], w2[kv_heads][inner], b2[kv_heads]
// binding 5: scores, f32[max_tokens][layers][kv_heads] (write by `finish`), g after the clamp
// binding 6: flags, u32[max_tokens][layers][kv_heads] (write by `finish`), 1 when admitted; token-major so
//            that the first n_tokens * layers * kv_heads words are the whole step (one copy for the readback)
// binding 7: partial_logits, f32 (`main` writes, `finish` reads), scratch: [max_tokens][kv_heads][chunks]
//            from float scratch_base (two such ranges, by layer parity, in a chain of layers, see below)
// bindings 8…: the dual cache (ring_append = 1 only): sequence, values, block table, slot info, the previous
//            layer's params and pool shards, declared and described in wgsl/write_gate_append.wgsl
//
// Entry `main`, grid (ceil(max_tokens / TILE), kv_heads, chunks = ceil(inner / UNITS)): a workgroup of
// 256 threads takes TILE tokens of one head and the UNITS hidden units of one chunk. Thread (slice, unit)
// first issues the loads of every SLICES-th input column of its unit's W1 column (all at once, unrolled, up
// to head_dim 128; else four independent loads per iteration later), and slice 0 those of its unit's b1 and
// w2, so their round trip overlaps the rest. The workgroup normalises the tile's inputs into workgroup
// memory (transposed, so one vec4 load gives a column for 4 tokens), multiplies them for all TILE tokens at
// once (the UNITS threads of a slice read consecutive words, so a weight is fetched once per token tile),
// sums the slices in workgroup memory, then GELU, w2 and a sum over the units give one partial logit per
// token and chunk. Spreading a layer over kv_heads * chunks workgroups of many independent loads matters at
// decode, where the gate is a latency-bound 4 MiB weight stream per layer for Llama-8B.
// Entry `finish`: adds the chunks and b2, sigmoid, clamp, flag. With ring_append = 0 the grid is
// ceil(max_tokens * kv_heads / FINISH_THREADS) and a thread finishes one (token, head). With ring_append = 1
// the grid is (max_tokens, kv_heads), workgroup (t, h) finishes token t of head h, and it also does the WG-KV
// append of that pair into the dual cache's ring: thread 0 records the slot's position and flag, all threads
// store the key and value (bindings 8… and the functions ring_record and ring_copy come from the text define
// RING_APPEND, spliced in below the bindings: wgsl/write_gate_append.wgsl, see
// src/gpu/ops/write_gate_append.ts; otherwise a stub of its functions without bindings).
//
// A chain of layers (decode, ring_append = 1): a layer's `finish` may instead run inside the next layer's
// `main` dispatch, one dispatch per layer instead of two. Then `main` of a layer with finish_later = 1 also
// stores the tile's keys and values into its ring and records each slot's position (not yet admitted: the
// step's own attention sees the token through the window whatever its flag), and `main` with
// finish_previous = 1 decides the previous layer's flags from its partial logits (at prev_scratch_base, the
// other parity) and sets them in its slot info. Valid while a step has at most `window` tokens: no query of
// the step then needs the flag of a key of the same step. The last layer of the chain keeps its `finish`.
//
// All layers at once (decode, all_layers = 1; src/gpu/ops/write_gate_layers.ts): once the step's last layer
// has computed its keys, `main` takes every layer in one grid (ceil(max_tokens / TILE), kv_heads,
// layers * chunks): layer l's keys at float l * k_stride of pre_k and post_k, its weights at float
// l * params_stride of params, its partial logits at float l * layer_scratch of the scratch. Entry
// `finish_layers` (grid ceil(n_tokens * layers * kv_heads / FINISH_THREADS)) then decides every (token,
// layer, head) and sets the flag in the ring slot's info word (binding 11 and ring_record of the
// RING_APPEND define; the fused QKV stored the keys and values and recorded the positions).

override head_dim: u32 = 64u;
override kv_heads: u32 = 1u;
override layers: u32 = 1u;
override inner: u32 = 256u;
override threshold: f32 = 0.1;
override epsilon: f32 = 0.001;
override activation: u32 = 0u; // 0: exact (erf) GELU, 1: SiLU
override ring_append: u32 = 0u; // 1: `finish` also appends the step's keys and values to the dual cache's ring
// A chain of layers (ring_append = 1): `main` stores the keys and values and records the positions, the
// flags come later; `main` finishes the previous layer. First float of this layer's partial logits and of
// the previous layer's.
override finish_later: u32 = 0u;
override finish_previous: u32 = 0u;
override scratch_base: u32 = 0u;
override prev_scratch_base: u32 = 0u;
// All layers in one grid (all_layers = 1): float strides between the layers' keys, weights and scratch.
override all_layers: u32 = 0u;
override k_stride: u32 = 0u;
override params_stride: u32 = 0u;
override layer_scratch: u32 = 0u;

const TILE: u32 = 8u; // tokens per workgroup: two vec4 accumulators per thread
const UNITS: u32 = 32u; // hidden units per chunk
const SLICES: u32 = 8u; // column slices per unit
const THREADS: u32 = 256u; // UNITS * SLICES, also TILE * 2 inputs * 16 lanes for the sums of squares
const RMS_EPS: f32 = 1e-6;
const FINISH_THREADS: u32 = 64u; // workgroup size of `finish`
// Most W1 columns per slice loaded at once (2 · head_dim / SLICES up to head_dim 128); larger heads, or
// inputs that are not a multiple of SLICES, take the loop of four loads at a time.
const MAX_COLUMNS: u32 = 32u;

struct Step { n_tokens: u32, pos0: u32, pad0: u32, pad1: u32 }
struct LayerParams { layer: u32, pad0: u32, pad1: u32, pad2: u32 }

@group(0) @binding(0) var<uniform> step: Step;
@group(0) @binding(1) var<uniform> layer_params: LayerParams;
@group(0) @binding(2) var<storage, read> pre_k: array<f32>;
@group(0) @binding(3) var<storage, read> post_k: array<f32>;
@group(0) @binding(4) var<storage, read> params: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> flags: array<u32>;
@group(0) @binding(7) var<storage, read_write> partial_logits: array<f32>;

{{RING_APPEND}}

// x_t[2c] = inputs of tokens 0..3 of the tile at column c, x_t[2c + 1] = tokens 4..7.
var<workgroup> x_t: array<vec4f, 4u * head_dim>;
var<workgroup> inv_rms: array<f32, TILE * 2u>; // [token][pre, post]
var<workgroup> squares: array<f32, THREADS>; // [token][pre, post][16 lanes] partial sums of squares
var<workgroup> partial: array<vec4f, 2u * THREADS>; // [slice][unit][tokens 0..3, 4..7] partial sums
var<workgroup> units_sum: array<vec4f, 2u * UNITS>; // [unit][tokens 0..3, 4..7] w2 * gelu, then their sum

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

fn activate4(x: vec4f) -> vec4f {
  if (activation == 1u) { return x / (1.0 + exp(-x)); }
  return vec4f(gelu(x.x), gelu(x.y), gelu(x.z), gelu(x.w));
}

fn chunks() -> u32 {
  return (inner + UNITS - 1u) / UNITS;
}

// Float offset of b2 in a layer's params.
fn b2_offset() -> u32 {
  let in_dim = 2u * head_dim;
  return in_dim + kv_heads * in_dim * inner + 2u * kv_heads * inner;
}

// Decides (token, head) of gate layer `layer` from its chunks' partial logits (from float `base` of the
// scratch) and its bias b2: writes the score and the flag, returns the flag.
fn decide(token: u32, head: u32, layer: u32, base: u32, b2: f32) -> bool {
  let i = token * kv_heads + head;
  let n = chunks();
  var z = b2;
  for (var c = 0u; c < n; c++) { z += partial_logits[base + i * n + c]; }
  // The upper clamp keeps a division rounded up from passing 1, so that threshold 1 admits nothing.
  let g = clamp(1.0 / (1.0 + exp(-z)), epsilon, 1.0);
  let admitted = g > threshold;
  let o = (token * layers + layer) * kv_heads + head;
  scores[o] = g;
  flags[o] = select(0u, 1u, admitted);
  return admitted;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) tid: u32) {
  let head = wg.y;
  // This workgroup's chunk and (all_layers = 1) the float offsets of its layer's keys, weights and scratch.
  var chunk = wg.z;
  var pb = 0u;
  var kb = 0u;
  var sb = scratch_base;
  if (all_layers == 1u) {
    let layer = wg.z / chunks();
    chunk = wg.z % chunks();
    pb = layer * params_stride;
    kb = layer * k_stride;
    sb = layer * layer_scratch;
  }
  let t0 = wg.x * TILE;
  let n_tokens = step.n_tokens;
  if (t0 >= n_tokens) { return; }
  let in_dim = 2u * head_dim;
  let stride = kv_heads * head_dim;
  let w1_at = pb + in_dim;
  let b1_at = w1_at + kv_heads * in_dim * inner;
  let w2_at = b1_at + kv_heads * inner;
  let unit = tid % UNITS;
  let slice = tid / UNITS;
  let r = chunk * UNITS + unit;
  // The weights this thread needs are loaded first, before the inputs are staged and normalised (they do
  // not depend on them), so their round trip to memory overlaps that work and its barriers: a decode step
  // streams every layer's W1 once with a single token, and waits on latency, not arithmetic. All of the
  // slice's W1 loads are issued at once (unrolled, constant trip count) where the columns fit MAX_COLUMNS.
  let preload = in_dim % SLICES == 0u && in_dim / SLICES <= MAX_COLUMNS;
  var w: array<f32, MAX_COLUMNS>;
  var b1 = 0.0;
  var w2 = 0.0;
  if (r < inner) {
    let column = w1_at + head * in_dim * inner + r;
    if (preload) {
      // @unroll
      for (var j = 0u; j < MAX_COLUMNS; j++) {
        if (j < in_dim / SLICES) { w[j] = params[column + (slice + j * SLICES) * inner]; }
      }
    }
    if (slice == 0u) {
      b1 = params[b1_at + head * inner + r];
      w2 = params[w2_at + head * inner + r];
    }
  }
  // A chain of layers: the chunk-0 workgroup of each (tile, head) stores the tile's keys and values, and
  // finishes the previous layer's tokens of the tile.
  if (chunk == 0u) {
    if (finish_later == 1u) {
      for (var k = 0u; k < TILE && t0 + k < n_tokens; k++) {
        if (tid == 0u) { ring_record(t0 + k, head, layer_params.layer, false); }
        ring_copy(t0 + k, head, tid, THREADS);
      }
    }
    if (finish_previous == 1u && tid < TILE && t0 + tid < n_tokens) {
      let layer = layer_params.layer - 1u;
      let admitted = decide(t0 + tid, head, layer, prev_scratch_base, previous_b2(head));
      ring_record(t0 + tid, head, layer, admitted);
    }
  }

  // Raw inputs of the tile into workgroup memory (coalesced: consecutive threads, consecutive floats).
  for (var i = tid; i < TILE * in_dim; i += THREADS) {
    let c = i % in_dim;
    let k = i / in_dim;
    let token = t0 + k;
    var v = 0.0;
    if (token < n_tokens) {
      let src = token * stride + head * head_dim + c % head_dim;
      v = select(post_k[kb + src], pre_k[kb + src], c < head_dim);
    }
    x_t[2u * c + k / 4u][k % 4u] = v;
  }
  workgroupBarrier();
  // Sum of squares of each (token, input): 16 threads per pair, from workgroup memory, so no global load
  // latency is serialised; lane 0 adds the 16 lanes.
  let pair = tid / 16u; // token * 2 + input
  let lane = tid % 16u;
  {
    let k = pair / 2u;
    let c0 = (pair % 2u) * head_dim;
    var sum = 0.0;
    for (var d = lane; d < head_dim; d += 16u) {
      let v = x_t[2u * (c0 + d) + k / 4u][k % 4u];
      sum += v * v;
    }
    squares[tid] = sum;
  }
  workgroupBarrier();
  if (lane == 0u) {
    var sum = 0.0;
    for (var j = 0u; j < 16u; j++) { sum += squares[tid + j]; }
    inv_rms[pair] = inverseSqrt(sum / f32(head_dim) + RMS_EPS);
  }
  workgroupBarrier();
  // Normalise in place; params[c] is pre_norm[c] for c < head_dim, post_norm[c - head_dim] after.
  for (var i = tid; i < TILE * in_dim; i += THREADS) {
    let c = i % in_dim;
    let k = i / in_dim;
    let which = select(1u, 0u, c < head_dim);
    x_t[2u * c + k / 4u][k % 4u] *= inv_rms[2u * k + which] * params[pb + c];
  }
  workgroupBarrier();

  var acc_lo = vec4f(0.0);
  var acc_hi = vec4f(0.0);
  if (r < inner) {
    let column = w1_at + head * in_dim * inner + r;
    if (preload) {
      // @unroll
      for (var j = 0u; j < MAX_COLUMNS; j++) {
        if (j < in_dim / SLICES) {
          let c = slice + j * SLICES;
          acc_lo += w[j] * x_t[2u * c];
          acc_hi += w[j] * x_t[2u * c + 1u];
        }
      }
    } else {
      var c = slice;
      while (c + 3u * SLICES < in_dim) {
        let c1 = c + SLICES;
        let c2 = c1 + SLICES;
        let c3 = c2 + SLICES;
        let w0 = params[column + c * inner];
        let w1 = params[column + c1 * inner];
        let w2 = params[column + c2 * inner];
        let w3 = params[column + c3 * inner];
        acc_lo += w0 * x_t[2u * c] + w1 * x_t[2u * c1] + w2 * x_t[2u * c2] + w3 * x_t[2u * c3];
        acc_hi += w0 * x_t[2u * c + 1u] + w1 * x_t[2u * c1 + 1u] + w2 * x_t[2u * c2 + 1u] +
          w3 * x_t[2u * c3 + 1u];
        c += 4u * SLICES;
      }
      while (c < in_dim) {
        let w = params[column + c * inner];
        acc_lo += w * x_t[2u * c];
        acc_hi += w * x_t[2u * c + 1u];
        c += SLICES;
      }
    }
  }
  partial[2u * tid] = acc_lo;
  partial[2u * tid + 1u] = acc_hi;
  workgroupBarrier();
  // Slice 0 adds the other slices, then bias, GELU and w2 per unit.
  if (slice == 0u) {
    var lo = vec4f(0.0);
    var hi = vec4f(0.0);
    if (r < inner) {
      lo = vec4f(b1);
      hi = lo;
      for (var sl = 0u; sl < SLICES; sl++) {
        lo += partial[2u * (sl * UNITS + unit)];
        hi += partial[2u * (sl * UNITS + unit) + 1u];
      }
      lo = w2 * activate4(lo);
      hi = w2 * activate4(hi);
    }
    units_sum[2u * unit] = lo;
    units_sum[2u * unit + 1u] = hi;
  }
  workgroupBarrier();
  for (var s = UNITS / 2u; s > 0u; s >>= 1u) {
    if (tid < s) {
      units_sum[2u * tid] += units_sum[2u * (tid + s)];
      units_sum[2u * tid + 1u] += units_sum[2u * (tid + s) + 1u];
    }
    workgroupBarrier();
  }
  if (tid < TILE && t0 + tid < n_tokens) {
    partial_logits[sb + ((t0 + tid) * kv_heads + head) * chunks() + chunk] = units_sum[tid / 4u][tid % 4u];
  }
}

@compute @workgroup_size(FINISH_THREADS)
fn finish(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) lane: u32) {
  var token = wg.x;
  var head = wg.y;
  if (ring_append == 0u) {
    let i = wg.x * FINISH_THREADS + lane;
    token = i / kv_heads;
    head = i % kv_heads;
  }
  if (token >= step.n_tokens) { return; }
  if (ring_append == 0u || lane == 0u) {
    let layer = layer_params.layer;
    let admitted = decide(token, head, layer, scratch_base, params[b2_offset() + head]);
    if (ring_append == 1u) { ring_record(token, head, layer, admitted); }
  }
  if (ring_append == 1u) { ring_copy(token, head, lane, FINISH_THREADS); }
}

// All layers at once (all_layers = 1): a thread per (token, layer, head) decides its flag and records it in
// the ring slot, whose key, value and position the fused QKV has stored.
@compute @workgroup_size(FINISH_THREADS)
fn finish_layers(@builtin(global_invocation_id) id: vec3u) {
  let i = id.x;
  if (i >= step.n_tokens * layers * kv_heads) { return; }
  let token = i / (layers * kv_heads);
  let layer = (i / kv_heads) % layers;
  let head = i % kv_heads;
  let b2 = params[layer * params_stride + b2_offset() + head];
  ring_record(token, head, layer, decide(token, head, layer, layer * layer_scratch, b2));
}

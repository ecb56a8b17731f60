// Fused FFN input for prefill: out[t][r] = silu(Σ_c X[t][c] · W_a[r][c]) · (Σ_c X[t][c] · W_b[r][c]) for
// t < m (W_a = gate, W_b = up), both weights in their GGUF types, decoded by per-weight copies of the
// dequantisation library (wgsl/dequant.wgsl, names suffixed _a and _b) while they are staged.
//
// Tiling follows wgsl/matmul.wgsl: a workgroup of 16 × 16 threads computes a (16 · tokens_per_thread)-token
// × 128-column product tile, thread (lx, ly) holding tokens 4·ly + 64·i + 0..3 (2·ly + 0..1 with 2 tokens
// per thread) times tile columns 4·lx + 0..3 and 64 + 4·lx + 0..3, f32 accumulators, k_step columns of K
// staged per step (the next step's tile fetched into registers while the current one is multiplied, or
// after it with prefetch = false; unroll_k = true unrolls the FMA loop over a step). Here tile columns
// 0..63 are gate rows n0..n0+63 and columns 64..127 the same up rows, so each thread holds the gate and up
// sums of the same four rows and writes silu(gate) · up straight from its registers: 64 output rows per
// workgroup.
//
// binding 0: W_a, array<u32>: raw rows of the gate weight; row r at byte r · row_bytes_a (read)
// binding 1: W_b, array<u32>: raw rows of the up weight; row r at byte r · row_bytes_b (read)
// binding 2: x, array<f32>: activations [m][cols], row-major (read)
// binding 3: out, array<f32>: [m][rows], row-major (read_write)
// binding 4: step, uniform: n_tokens (= m), pos0 (unused here)
//
// Dispatch: x = ceil(rows / 64), y = ceil(max_m / (16 · tokens_per_thread)). Tiles past `m` return at once.
// Tuning (override constants, see MatmulTuning in src/gpu/ops/matmul.ts): tokens_per_thread, k_step,
// prefetch, unroll_k.

struct Step {
  n_tokens: u32,
  pos0: u32,
}

// Elements per row of both weights (and per token row of x), rows of each, bytes per row.
override cols: u32 = 256u;
override rows: u32 = 1u;
override row_bytes_a: u32 = 1u;
override row_bytes_b: u32 = 1u;
// Tokens per thread: 2 (32-token tiles), 4 (64-token tiles) or 8 (128-token tiles).
override tokens_per_thread: u32 = 4u;
// Columns of K staged per step: 16 or 32.
override k_step: u32 = 32u;
// Fetch the next step's tiles into registers before the FMA loop (true) or after it (false).
override prefetch: bool = true;
// Unroll the FMA loop over the k_step columns of a step.
override unroll_k: bool = false;

const THREADS = 256u;
const TILE_COLS = 128u;
const HALF = 64u; // output rows per workgroup
const W_STRIDE = 32u; // vec4s per k of the W tile (TILE_COLS / 4)
override tile_tokens: u32 = 16u * tokens_per_thread;
// vec4s per k of the X tile (token quads).
override x_stride: u32 = tile_tokens / 4u;
// Sixteen-column W units per step; X vec4s per step, and per thread (at least one).
override w_units: u32 = TILE_COLS * k_step / 16u;
override x_units: u32 = tile_tokens * k_step / 4u;
override x_loads: u32 = max(1u, x_units / THREADS);
// Whether every thread stages X (not so for 32-token tiles with 16-column steps: 128 vec4s).
override x_everyone: bool = x_units >= THREADS;

@group(0) @binding(0) var<storage, read> W_a: array<u32>;
@group(0) @binding(1) var<storage, read> W_b: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> step: Step;

// xs[x_at(k, q)]: tokens 4q..4q+3 of the tile at column k0 + k.
var<workgroup> xs: array<vec4f, k_step * x_stride>;
// ws[k · W_STRIDE + q]: tile columns 4q..4q+3 (gate rows, then up rows) at column k0 + k.
var<workgroup> ws: array<vec4f, k_step * W_STRIDE>;

// Where token quad q of column k lives in xs: row k, quad q XOR (k mod 8). The swizzle spreads the vec4
// stores of a warp (consecutive k, same q) over all banks, while the inner loop still reads consecutive
// quads at one k; it stays within each group of 8 quads, so q + 16 maps to x_at(k, q) + 16.
fn x_at(k: u32, q: u32) -> u32 {
  return k * x_stride + (q ^ (k & 7u));
}

{{DEQUANT_A}}
{{DEQUANT_B}}

// Columns e..e+15 of row `row` of the gate (up = false) or up weight (zero past the row end or past rows).
fn fetch_w(up: bool, row: u32, e: u32) -> array<vec4f, 4> {
  var w: array<vec4f, 4>;
  if (row >= rows || e >= cols) { return w; }
  if (e + 16u <= cols) {
    if (up) { return dq16_b(row * row_bytes_b, e); }
    return dq16_a(row * row_bytes_a, e);
  }
  // @unroll
  for (var c = 0u; c < 4u; c++) {
    if (e + 4u * c < cols) {
      if (up) {
        w[c] = dq4_b(row * row_bytes_b, e + 4u * c);
      } else {
        w[c] = dq4_a(row * row_bytes_a, e + 4u * c);
      }
    }
  }
  return w;
}

// Column e of tokens t..t+3 (zero past m or past the row end).
fn fetch_x(t: u32, e: u32) -> vec4f {
  var v = vec4f(0.0);
  if (e >= cols) { return v; }
  let m = step.n_tokens;
  if (t < m) { v.x = x[t * cols + e]; }
  if (t + 1u < m) { v.y = x[(t + 1u) * cols + e]; }
  if (t + 2u < m) { v.z = x[(t + 2u) * cols + e]; }
  if (t + 3u < m) { v.w = x[(t + 3u) * cols + e]; }
  return v;
}

// Four values of tile column `i` at K columns k..k+3 into the k-major W tile.
fn put_w(k: u32, i: u32, v: vec4f) {
  let at = k * W_STRIDE + i / 4u;
  let lane = i % 4u;
  ws[at][lane] = v.x;
  ws[at + W_STRIDE][lane] = v.y;
  ws[at + 2u * W_STRIDE][lane] = v.z;
  ws[at + 3u * W_STRIDE][lane] = v.w;
}

fn silu(v: vec4f) -> vec4f {
  return v / (1.0 + exp(-v));
}

// silu(gate) · up of token t at rows r..r+3 (those that exist).
fn put_out(t: u32, r: u32, gate: vec4f, up: vec4f) {
  if (t >= step.n_tokens) { return; }
  let v = silu(gate) * up;
  // @unroll
  for (var j = 0u; j < 4u; j++) {
    if (r + j < rows) { out[t * rows + r + j] = v[j]; }
  }
}

@compute @workgroup_size(16, 16)
fn swiglu(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
  @builtin(local_invocation_index) tid: u32,
) {
  let n0 = wid.x * HALF;
  let t0 = wid.y * tile_tokens;
  if (t0 >= step.n_tokens) { return; }

  // This thread's staging work: W unit (tile column wi, K columns 16·wk..) and X column xk of token quads
  // xq + p·xq_step (when it stages X at all).
  let wi = tid % TILE_COLS;
  let wk = tid / TILE_COLS;
  let w_up = wi >= HALF;
  let w_row = n0 + wi % HALF;
  let xk = tid % k_step;
  let xq = tid / k_step;
  let xq_step = THREADS / k_step;
  let x_mine = x_everyone || tid < x_units;

  // acc[2c + h]: token 4·ly + c (acc[8 + 2c + h]: token 64 + 4·ly + c); h = 0 gate, 1 up of rows
  // n0 + 4·lx + 0..3. With 2 tokens per thread, token 2·ly + c, from the high half of quad ly / 2 when ly
  // is odd.
  var acc: array<vec4f, 16>;
  var wv: array<vec4f, 4>;
  var xv: array<vec4f, 4>;
  let x_high = (lid.y & 1u) == 1u;
  if (tid < w_units) { wv = fetch_w(w_up, w_row, 16u * wk); }
  if (x_mine) {
    for (var p = 0u; p < x_loads; p++) { xv[p] = fetch_x(t0 + 4u * (xq + p * xq_step), xk); }
  }

  for (var k0 = 0u; k0 < cols; k0 += k_step) {
    if (tid < w_units) {
      put_w(16u * wk, wi, wv[0]);
      put_w(16u * wk + 4u, wi, wv[1]);
      put_w(16u * wk + 8u, wi, wv[2]);
      put_w(16u * wk + 12u, wi, wv[3]);
    }
    if (x_mine) {
      for (var p = 0u; p < x_loads; p++) { xs[x_at(xk, xq + p * xq_step)] = xv[p]; }
    }
    workgroupBarrier();

    let k1 = k0 + k_step;
    if (prefetch && k1 < cols) {
      if (tid < w_units) { wv = fetch_w(w_up, w_row, k1 + 16u * wk); }
      if (x_mine) {
        for (var p = 0u; p < x_loads; p++) { xv[p] = fetch_x(t0 + 4u * (xq + p * xq_step), k1 + xk); }
      }
    }

    // @unroll if unroll_k
    for (var k = 0u; k < k_step; k++) {
      let b0 = ws[k * W_STRIDE + lid.x];
      let b1 = ws[k * W_STRIDE + 16u + lid.x];
      if (tokens_per_thread == 2u) {
        let a = xs[x_at(k, lid.y / 2u)];
        let pair = select(a.xy, a.zw, x_high);
        acc[0] = fma(vec4f(pair.x), b0, acc[0]);
        acc[1] = fma(vec4f(pair.x), b1, acc[1]);
        acc[2] = fma(vec4f(pair.y), b0, acc[2]);
        acc[3] = fma(vec4f(pair.y), b1, acc[3]);
      } else {
        let a0 = xs[x_at(k, lid.y)];
        acc[0] = fma(vec4f(a0.x), b0, acc[0]);
        acc[1] = fma(vec4f(a0.x), b1, acc[1]);
        acc[2] = fma(vec4f(a0.y), b0, acc[2]);
        acc[3] = fma(vec4f(a0.y), b1, acc[3]);
        acc[4] = fma(vec4f(a0.z), b0, acc[4]);
        acc[5] = fma(vec4f(a0.z), b1, acc[5]);
        acc[6] = fma(vec4f(a0.w), b0, acc[6]);
        acc[7] = fma(vec4f(a0.w), b1, acc[7]);
        if (tokens_per_thread == 8u) {
          let a1 = xs[x_at(k, lid.y) + 16u];
          acc[8] = fma(vec4f(a1.x), b0, acc[8]);
          acc[9] = fma(vec4f(a1.x), b1, acc[9]);
          acc[10] = fma(vec4f(a1.y), b0, acc[10]);
          acc[11] = fma(vec4f(a1.y), b1, acc[11]);
          acc[12] = fma(vec4f(a1.z), b0, acc[12]);
          acc[13] = fma(vec4f(a1.z), b1, acc[13]);
          acc[14] = fma(vec4f(a1.w), b0, acc[14]);
          acc[15] = fma(vec4f(a1.w), b1, acc[15]);
        }
      }
    }

    if (!prefetch && k1 < cols) {
      if (tid < w_units) { wv = fetch_w(w_up, w_row, k1 + 16u * wk); }
      if (x_mine) {
        for (var p = 0u; p < x_loads; p++) { xv[p] = fetch_x(t0 + 4u * (xq + p * xq_step), k1 + xk); }
      }
    }
    workgroupBarrier();
  }

  let r = n0 + 4u * lid.x;
  if (tokens_per_thread == 2u) {
    let t = t0 + 2u * lid.y;
    put_out(t, r, acc[0], acc[1]);
    put_out(t + 1u, r, acc[2], acc[3]);
    return;
  }
  let t = t0 + 4u * lid.y;
  put_out(t, r, acc[0], acc[1]);
  put_out(t + 1u, r, acc[2], acc[3]);
  put_out(t + 2u, r, acc[4], acc[5]);
  put_out(t + 3u, r, acc[6], acc[7]);
  if (tokens_per_thread == 8u) {
    put_out(t + 64u, r, acc[8], acc[9]);
    put_out(t + 65u, r, acc[10], acc[11]);
    put_out(t + 66u, r, acc[12], acc[13]);
    put_out(t + 67u, r, acc[14], acc[15]);
  }
}

// Matrix-matrix products for prefill, weights kept in their GGUF types (decoded by per-weight copies of the
// dequantisation library, wgsl/dequant.wgsl, names suffixed _a, _b and _c, while they are staged in
// workgroup memory):
//   entry `main`:   Y[t][first_row + r] = Σ_c X[t][c] · W_a[r][c] for t < m, one weight part;
//   entry `qkv`:    Q, K and V of attention in one dispatch: the row tiles of W_a (Q), then W_b (K), then
//                   W_c (V), each writing its own output, so the small K and V products share the GPU with
//                   Q instead of running alone on a fraction of it;
//   entry `swiglu`: the FFN input, Y[t][r] = silu(Σ_c X[t][c] · W_a[r][c]) · (Σ_c X[t][c] · W_b[r][c]) for
//                   t < m (W_a = gate, W_b = up, of the same type and shape). Its 128-row tiles are
//                   "paired": tile rows 0..63 are gate rows n0..n0+63 (copy _a) and tile rows 64..127 the
//                   same up rows (copy _b), so each thread holds the gate and up sums of the same four rows
//                   and writes silu(gate) · up straight from its registers: 64 output rows per workgroup,
//                   and the gate and up activations never go through memory.
//
// Tiling: a workgroup of 16 × 16 threads computes a (16 · tokens_per_thread)-token × 128-row product tile.
// Thread (lx, ly) keeps tokens_per_thread × 8 f32 accumulators: tokens 4·ly + 64·i + 0..3 (i < tokens / 4)
// times tile rows 4·lx + 0..3 and 64 + 4·lx + 0..3. Splitting a thread's rows and tokens into quads 64
// apart makes every inner-loop read of workgroup memory one vec4 at consecutive addresses across the
// threads (no bank conflicts), and each k step costs tokens_per_thread / 4 + 2 vec4 reads for
// tokens_per_thread · 8 FMAs. With 2 tokens per thread (32-token tiles) thread (lx, ly) takes tokens
// 2·ly + 0..1, one half of token quad ly / 2 (threads ly and ly + 1 read the same vec4: a broadcast).
//
// The K loop stages k_step columns per step, all threads taking part:
// - W tile [128 rows][k_step]: 128 · k_step / 16 units of sixteen columns of one row, decoded with dq16
//   (one scale decode per unit); unit u covers tile row u % 128, so a warp stores 32 consecutive rows of
//   one k (conflict-free scalar stores) and, in `swiglu`, reads one weight.
// - X tile [tokens][k_step]: each thread reads four tokens at one column (consecutive threads, consecutive
//   columns: coalesced) and stores them as one vec4 (only the first 128 threads for 32-token tiles with
//   16-column steps).
// Both are kept k-major. The next step's tile is fetched into registers before the current one is
// multiplied, so its global reads overlap the FMAs (prefetch = false: after the multiply, which keeps the
// fetched values out of the registers live across the FMA loop); two barriers per step guard the single
// buffer. unroll_k = true unrolls the FMA loop over the step's k_step columns, so its workgroup-memory
// offsets are constants.
//
// binding 0: W_a, array<u32>: `main`: the raw rows of one weight part, row r at byte r · row_bytes; `qkv`:
//            Q's weight, `swiglu`: the gate weight, row r at byte r · row_bytes_a (read)
// binding 5: W_b, array<u32>: `qkv`: K's weight, `swiglu`: the up weight, row r at byte r · row_bytes_b
//            (`main` binds W_a again) (read)
// binding 6: W_c, array<u32>: V's weight, row r at byte r · row_bytes_c (`qkv`; `main` and `swiglu` bind
//            W_a again) (read)
// binding 1: x, array<f32>: activations [m][cols], row-major (read)
// binding 2: y, array<f32>: `main`: outputs [m][out_stride], row-major, this part writing columns
//            first_row .. first_row + rows; `qkv`: Q [m][rows_a]; `swiglu`: silu(gate) · up [m][rows_a]
//            (read_write)
// binding 7: y_b, array<f32>: K [m][rows_b] (`qkv`; a placeholder for `main` and `swiglu`) (read_write)
// binding 8: y_c, array<f32>: V [m][rows_c] (`qkv`; a placeholder for `main` and `swiglu`) (read_write)
// binding 3: step, uniform: n_tokens (= m, the tokens of this step), pos0 (unused here)
// binding 4: part, uniform: rows (in this part), first_row, out_stride (rows of the whole weight), cols
//            (elements per row), row_bytes; `qkv` and `swiglu` read cols only
//
// Dispatch: `main`: x = ceil(rows / 128); `qkv`: x = the row tiles of Q, K and V together; `swiglu`:
// x = ceil(rows_a / 64); y = ceil(max_m / (16 · tokens_per_thread)). Tiles past `m` return at once.
// Split K (`main` only): with z = S > 1 the workgroups of z = s take columns [s · c, (s + 1) · c) (c =
// cols / S rounded up to whole steps) and write their partial sums to part s of y: y[s][t][row] at
// s · (m · out_stride + SPLIT_SKEW) + t · out_stride + row, parts the consumer adds up (`add_norm` of
// wgsl/rmsnorm.wgsl; SPLIT_SKEW floats between parts keep them off the same memory channels). More
// workgroups for steps of few tokens, whose tiles alone would leave most of the GPU idle.
// Tuning (override constants, see MatmulTuning in src/gpu/ops/matmul.ts): tokens_per_thread, k_step,
// prefetch, unroll_k.
//
// Arithmetic (text defines from src/gpu/ops/matmul.ts, `matmulDefines`): with HALF = false the tiles hold f32
// and every product is summed in f32. With HALF = true (shader-f16; ENABLE_F16 is then `enable f16;` and
// TILE_SCALAR f16) the tiles hold f16 — half the workgroup memory and half the bytes per inner-loop read —
// and the FMAs run on f16 vectors (faster only where the GPU's f16 rate beats its f32 rate: not on an H100
// through Vulkan, where these products ran slower than f32); each K step's k_step products are summed
// in f16 and added to f32 sums after the step, so rounding grows with k_step, not with the row length.
// Exact for f16 weights up to the rounding of x to f16 and of the partial sums.

{{ENABLE_F16}}

// #include matmul_weights

// Tokens per thread: 2 (32-token tiles), 4 (64-token tiles) or 8 (128-token tiles).
override tokens_per_thread: u32 = 4u;
// Columns of K staged per step: 16 or 32.
override k_step: u32 = 32u;
// Fetch the next step's tiles into registers before the FMA loop (true) or after it (false).
override prefetch: bool = true;
// Unroll the FMA loop over the k_step columns of a step.
override unroll_k: bool = false;

const half_products = {{HALF}};
// Element type of the workgroup tiles and of one step's sums.
alias tile_t = {{TILE_SCALAR}};
alias tile4 = vec4<tile_t>;

const THREADS = 256u;
const W_STRIDE = 32u; // vec4s per k of the W tile (TILE_ROWS / 4)
override tile_tokens: u32 = 16u * tokens_per_thread;
// vec4s per k of the X tile (token quads).
override x_stride: u32 = tile_tokens / 4u;
// Sixteen-column W units per step; X vec4s per step, and per thread (at least one).
override w_units: u32 = TILE_ROWS * k_step / 16u;
override x_units: u32 = tile_tokens * k_step / 4u;
override x_loads: u32 = max(1u, x_units / THREADS);
// Whether every thread stages X (not so for 32-token tiles with 16-column steps: 128 vec4s).
override x_everyone: bool = x_units >= THREADS;

// xs[x_at(k, q)]: tokens 4q..4q+3 of the tile at column k0 + k.
var<workgroup> xs: array<tile4, k_step * x_stride>;
// ws[k · W_STRIDE + q]: tile rows 4q..4q+3 at column k0 + k.
var<workgroup> ws: array<tile4, k_step * W_STRIDE>;

// Where token quad q of column k lives in xs: row k, quad q XOR (k mod 8). The swizzle spreads the vec4
// stores of a warp (consecutive k, same q) over all banks, while the inner loop still reads consecutive
// quads at one k; it stays within each group of 8 quads, so q + 16 maps to x_at(k, q) + 16.
fn x_at(k: u32, q: u32) -> u32 {
  return k * x_stride + (q ^ (k & 7u));
}

// `main` with split K: where this workgroup's part of y starts ((s · m) · out_stride); 0 otherwise.
var<private> y_base: u32;
// Floats between split parts of y (see Dispatch).
const SPLIT_SKEW: u32 = 64u;

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

// Four values of tile row `i` at tile columns k..k+3 into the k-major W tile.
fn put_w(k: u32, i: u32, v: vec4f) {
  let at = k * W_STRIDE + i / 4u;
  let lane = i % 4u;
  ws[at][lane] = tile_t(v.x);
  ws[at + W_STRIDE][lane] = tile_t(v.y);
  ws[at + 2u * W_STRIDE][lane] = tile_t(v.z);
  ws[at + 3u * W_STRIDE][lane] = tile_t(v.w);
}

fn silu(v: vec4f) -> vec4f {
  return v / (1.0 + exp(-v));
}

// silu(gate) · up of token t at rows r..r+3 of the gate and up weights (those that exist), into y.
fn put_swiglu(t: u32, r: u32, gate: vec4f, up: vec4f) {
  if (t >= step.n_tokens) { return; }
  let v = silu(gate) * up;
  let at = t * out_stride + out_first + r;
  // @unroll
  for (var j = 0u; j < 4u; j++) {
    if (r + j < w_rows) { y[at + j] = v[j]; }
  }
}

// Outputs of token t at rows r..r+3 of the workgroup's weight (those that exist).
fn put_y(t: u32, r: u32, v: vec4f) {
  if (t >= step.n_tokens) { return; }
  let at = y_base + t * out_stride + out_first + r;
  // @unroll
  for (var j = 0u; j < 4u; j++) {
    if (r + j < w_rows) {
      if (which == 0u) {
        y[at + j] = v[j];
      } else if (which == 1u) {
        y_b[at + j] = v[j];
      } else {
        y_c[at + j] = v[j];
      }
    }
  }
}

@compute @workgroup_size(16, 16)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
  @builtin(local_invocation_index) tid: u32,
  @builtin(num_workgroups) groups: vec3u,
) {
  select_main();
  let t0 = wid.y * tile_tokens;
  if (t0 >= step.n_tokens) { return; }
  // Split K: this split's whole steps of columns, and its part of y.
  let per_split = (cols + groups.z * k_step - 1u) / (groups.z * k_step) * k_step;
  let k_begin = min(wid.z * per_split, cols);
  y_base = wid.z * (step.n_tokens * out_stride + SPLIT_SKEW);
  tile_product(wid.x * TILE_ROWS, t0, lid, tid, k_begin, min(k_begin + per_split, cols));
}

@compute @workgroup_size(16, 16)
fn qkv(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
  @builtin(local_invocation_index) tid: u32,
) {
  let tile = select_qkv(wid.x);
  let t0 = wid.y * tile_tokens;
  if (t0 >= step.n_tokens) { return; }
  tile_product(tile * TILE_ROWS, t0, lid, tid, 0u, cols);
}

@compute @workgroup_size(16, 16)
fn swiglu(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
  @builtin(local_invocation_index) tid: u32,
) {
  select_swiglu();
  let t0 = wid.y * tile_tokens;
  if (t0 >= step.n_tokens) { return; }
  tile_product(wid.x * HALF_ROWS, t0, lid, tid, 0u, cols);
}

// The workgroup's product tile times tokens t0 … (every thread calls it): rows n0 … n0 + 127 of its
// weight, or when paired (`swiglu`) rows n0 … n0 + 63 of the gate weight, then the same rows of the up
// weight, over columns [k_begin, k_end) (k_begin a multiple of k_step).
fn tile_product(n0: u32, t0: u32, lid: vec3u, tid: u32, k_begin: u32, k_end: u32) {
  // This thread's staging work: W unit (tile row wi, columns 16·wk.., weight row w_row) and X column xk
  // of token quads xq + p·xq_step (when it stages X at all).
  let wi = tid % TILE_ROWS;
  let wk = tid / TILE_ROWS;
  // (Paired: tile rows i and 64 + i, gate and up, meet in the accumulators of one thread.)
  let w_row = staged_row(n0, wi);
  let xk = tid % k_step;
  let xq = tid / k_step;
  let xq_step = THREADS / k_step;
  let x_mine = x_everyone || tid < x_units;

  // sums[2c + h]: token 4·ly + c (sums[8 + 2c + h]: token 64 + 4·ly + c), tile rows 64h + 4·lx + 0..3
  // (when paired, h = 0 gate and 1 up of rows n0 + 4·lx + 0..3); with 2 tokens per thread, token
  // 2·ly + c, taken from the high half of quad ly / 2 when ly is odd. f32: the sums over all steps; half:
  // this step's, added to acc (f32, same layout) after each step. At the end acc holds the totals.
  var sums: array<tile4, 16>;
  var acc: array<vec4f, 16>;
  var wv: array<vec4f, 4>;
  var xv: array<vec4f, 4>;
  let x_high = (lid.y & 1u) == 1u;
  if (tid < w_units) { wv = fetch_w(w_row, k_begin + 16u * wk); }
  if (x_mine) {
    for (var p = 0u; p < x_loads; p++) { xv[p] = fetch_x(t0 + 4u * (xq + p * xq_step), k_begin + xk); }
  }

  for (var k0 = k_begin; k0 < k_end; k0 += k_step) {
    if (tid < w_units) {
      put_w(16u * wk, wi, wv[0]);
      put_w(16u * wk + 4u, wi, wv[1]);
      put_w(16u * wk + 8u, wi, wv[2]);
      put_w(16u * wk + 12u, wi, wv[3]);
    }
    if (x_mine) {
      for (var p = 0u; p < x_loads; p++) { xs[x_at(xk, xq + p * xq_step)] = tile4(xv[p]); }
    }
    workgroupBarrier();

    let k1 = k0 + k_step;
    if (prefetch && k1 < k_end) {
      if (tid < w_units) { wv = fetch_w(w_row, k1 + 16u * wk); }
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
        sums[0] = fma(tile4(pair.x), b0, sums[0]);
        sums[1] = fma(tile4(pair.x), b1, sums[1]);
        sums[2] = fma(tile4(pair.y), b0, sums[2]);
        sums[3] = fma(tile4(pair.y), b1, sums[3]);
      } else {
        let a0 = xs[x_at(k, lid.y)];
        sums[0] = fma(tile4(a0.x), b0, sums[0]);
        sums[1] = fma(tile4(a0.x), b1, sums[1]);
        sums[2] = fma(tile4(a0.y), b0, sums[2]);
        sums[3] = fma(tile4(a0.y), b1, sums[3]);
        sums[4] = fma(tile4(a0.z), b0, sums[4]);
        sums[5] = fma(tile4(a0.z), b1, sums[5]);
        sums[6] = fma(tile4(a0.w), b0, sums[6]);
        sums[7] = fma(tile4(a0.w), b1, sums[7]);
        if (tokens_per_thread == 8u) {
          let a1 = xs[x_at(k, lid.y) + 16u];
          sums[8] = fma(tile4(a1.x), b0, sums[8]);
          sums[9] = fma(tile4(a1.x), b1, sums[9]);
          sums[10] = fma(tile4(a1.y), b0, sums[10]);
          sums[11] = fma(tile4(a1.y), b1, sums[11]);
          sums[12] = fma(tile4(a1.z), b0, sums[12]);
          sums[13] = fma(tile4(a1.z), b1, sums[13]);
          sums[14] = fma(tile4(a1.w), b0, sums[14]);
          sums[15] = fma(tile4(a1.w), b1, sums[15]);
        }
      }
    }

    if (half_products) {
      // @unroll
      for (var j = 0u; j < 16u; j++) {
        acc[j] += vec4f(sums[j]);
        sums[j] = tile4();
      }
    }

    if (!prefetch && k1 < k_end) {
      if (tid < w_units) { wv = fetch_w(w_row, k1 + 16u * wk); }
      if (x_mine) {
        for (var p = 0u; p < x_loads; p++) { xv[p] = fetch_x(t0 + 4u * (xq + p * xq_step), k1 + xk); }
      }
    }
    workgroupBarrier();
  }
  if (!half_products) {
    // @unroll
    for (var j = 0u; j < 16u; j++) { acc[j] = vec4f(sums[j]); }
  }

  let r = n0 + 4u * lid.x;
  if (tokens_per_thread == 2u) {
    let t = t0 + 2u * lid.y;
    put_tile(t, r, acc[0], acc[1]);
    put_tile(t + 1u, r, acc[2], acc[3]);
    return;
  }
  let t = t0 + 4u * lid.y;
  put_tile(t, r, acc[0], acc[1]);
  put_tile(t + 1u, r, acc[2], acc[3]);
  put_tile(t + 2u, r, acc[4], acc[5]);
  put_tile(t + 3u, r, acc[6], acc[7]);
  if (tokens_per_thread == 8u) {
    put_tile(t + 64u, r, acc[8], acc[9]);
    put_tile(t + 65u, r, acc[10], acc[11]);
    put_tile(t + 66u, r, acc[12], acc[13]);
    put_tile(t + 67u, r, acc[14], acc[15]);
  }
}

// Token t's sums of tile rows 4·lx + 0..3 (lo) and 64 + 4·lx + 0..3 (hi), r = n0 + 4·lx: outputs at rows
// r..r+3 and r+64..r+67 of the workgroup's weight, or when paired silu(lo) · hi at rows r..r+3.
fn put_tile(t: u32, r: u32, lo: vec4f, hi: vec4f) {
  if (paired) {
    put_swiglu(t, r, lo, hi);
    return;
  }
  put_y(t, r, lo);
  put_y(t, r + 64u, hi);
}

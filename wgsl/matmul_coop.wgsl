// Matrix-matrix products for prefill on the GPU's matrix units (cooperative matrices: 16 × 16 f16
// fragments multiplied into f32 ones by a whole subgroup), weights kept in their GGUF types and decoded to
// f16 as they are staged. The same entries, bindings and grid as wgsl/matmul.wgsl (see there), with output
// tiles of tile_tokens (64 or 128) tokens × 128 rows:
//   entry `main`:   Y[t][first_row + r] = Σ_c X[t][c] · W_a[r][c] for t < m, one weight part;
//   entry `qkv`:    Q, K and V of attention in one dispatch: the row tiles of W_a (Q), then W_b (K), then
//                   W_c (V), each writing its own output;
//   entry `swiglu`: Y[t][r] = silu(Σ_c X[t][c] · W_a[r][c]) · (Σ_c X[t][c] · W_b[r][c]) (gate, up), in
//                   paired tiles: tile rows 0..63 are gate rows n0..n0+63, 64..127 the same up rows.
//
// Arithmetic: activations and weights are rounded to f16 in the tiles; products are summed in f32 (the
// fragments' accumulators).
//
// Tiling: 256 threads = 8 subgroups of 32 (the kernel is only built where subgroups are 32 wide, and takes
// invocations 32s .. 32s + 31 to be subgroup s). The output tile is (tile_tokens / 16) token blocks × 8
// row blocks of 16 × 16; subgroup s owns token_blocks (2 or 4) token blocks from token_blocks · (s / 4),
// times two row blocks: 2(s % 4) and 2(s % 4) + 1, or, paired, s % 4 (gate) and s % 4 + 4 (the same up
// rows), so that silu(gate) · up is formed from one subgroup's own accumulators. Per 16-column K step a
// subgroup loads two B fragments (rows) and token_blocks A fragments (tokens) for 2 · token_blocks
// multiply-adds.
//
// The K loop stages K_STEP = 32 columns per step into workgroup memory (X token-major, W k-major), every
// thread taking part: one sixteen-column unit of one weight row (thread i: tile row i % 128, columns
// 16 (i / 128) ..), decoded by
// the dequantisation library (dq16, copies suffixed _a, _b, _c as in wgsl/matmul.wgsl), and x_per_thread
// (8 or 16) consecutive activations of one token. The next step's values are read into registers before
// the current step is multiplied, so their global reads overlap the matrix work; two barriers per step
// guard the single buffer. The outputs leave one fragment at a time through a 16 × 16 f32 staging area per
// subgroup (cs), each invocation taking 8 values of one token.
//
// The fragment operations (frag_zero, load_a, load_b, mma, store_c) are spliced in from
// wgsl/coop_fragments.wgsl (the hardware's cooperative matrices) or wgsl/coop_fragments_emulated.wgsl
// (the same contract in plain WGSL, for GPUs without them: tests).
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
// x = ceil(rows_a / 64); y = ceil(max_m / tile_tokens). Tiles past `m` return at once.

{{ENABLE}}

// #include matmul_weights

const THREADS = 256u;
// Tokens per output tile, 64 or 128 (MatmulTuning.coopTileTokens); token blocks of 16 per subgroup (2 or
// 4); activations per thread and K step (8 or 16).
override tile_tokens: u32 = 64u;
override token_blocks: u32 = 2u;
override x_per_thread: u32 = 8u;
const K_STEP = 32u;
// f16 values per token row of the X tile: K_STEP plus 8 of padding (rows stay 16-byte aligned, and
// consecutive rows start in different banks).
const STRIDE = 40u;
// f16 values per column of the k-major W tile: TILE_ROWS plus 8 of padding.
const W_STRIDE = 136u;
// f32 values per row of a subgroup's output staging (one 16 × 16 fragment).
const OUT_STRIDE = 16u;
// This invocation's subgroup (32 invocations) and its index within it (the emulated fragments use it).
var<private> subgroup: u32;
var<private> lane: u32;

// xs[t · STRIDE + k]: token t of the tile at column k0 + k.
var<workgroup> xs: array<f16, tile_tokens * STRIDE>;
// ws[k · W_STRIDE + r]: tile row r at column k0 + k (k-major: a warp staging 32 consecutive rows of one
// column writes 64 consecutive bytes).
var<workgroup> ws: array<f16, K_STEP * W_STRIDE>;
// cs[s · 256 + i · 16 + j]: subgroup s's staging of one 16 × 16 output fragment, row i, column j.
var<workgroup> cs: array<f32, 8u * 256u>;

{{FRAGMENTS}}

// Columns e .. e + x_per_thread − 1 of token t (zero past m or past the row end).
fn fetch_x(t: u32, e: u32) -> array<f32, 16> {
  var v: array<f32, 16>;
  if (t >= step.n_tokens) { return v; }
  let base = t * cols;
  // @unroll
  for (var j = 0u; j < x_per_thread; j++) {
    if (e + j < cols) { v[j] = x[base + e + j]; }
  }
  return v;
}

fn silu(v: f32) -> f32 {
  return v / (1.0 + exp(-v));
}

// One output of token t at row r of the workgroup's weight (skipped past m or past its rows).
fn put_y(t: u32, r: u32, v: f32) {
  if (t >= step.n_tokens || r >= w_rows) { return; }
  let at = t * out_stride + out_first + r;
  if (which == 0u) {
    y[at] = v;
  } else if (which == 1u) {
    y_b[at] = v;
  } else {
    y_c[at] = v;
  }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) tid: u32) {
  select_main();
  let t0 = wid.y * tile_tokens;
  if (t0 >= step.n_tokens) { return; }
  tile_product(wid.x * TILE_ROWS, t0, tid);
}

@compute @workgroup_size(256)
fn qkv(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) tid: u32) {
  let tile = select_qkv(wid.x);
  let t0 = wid.y * tile_tokens;
  if (t0 >= step.n_tokens) { return; }
  tile_product(tile * TILE_ROWS, t0, tid);
}

@compute @workgroup_size(256)
fn swiglu(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) tid: u32) {
  select_swiglu();
  let t0 = wid.y * tile_tokens;
  if (t0 >= step.n_tokens) { return; }
  tile_product(wid.x * HALF_ROWS, t0, tid);
}

// The workgroup's product tile times tokens t0 … t0 + tile_tokens − 1 (every thread calls it): rows
// n0 … n0 + 127 of its weight, or when paired rows n0 … n0 + 63 of the gate weight, then the same rows of
// the up weight.
fn tile_product(n0: u32, t0: u32, tid: u32) {
  // Staging work: W unit (tile row wi, columns 16·wk.., weight row w_row), X (token xt, columns xk..).
  let wi = tid % TILE_ROWS;
  let wk = tid / TILE_ROWS;
  let w_row = staged_row(n0, wi);
  let xt = tid / (K_STEP / x_per_thread);
  let xk = x_per_thread * (tid % (K_STEP / x_per_thread));

  // Matrix work: subgroup s, its token blocks tb0 … tb0 + token_blocks − 1 and row blocks rb0, rb1;
  // accumulator 2i + j is token block tb0 + i times row block rb_j.
  let s = tid / 32u;
  subgroup = s;
  lane = tid % 32u;
  let tb0 = token_blocks * (s / 4u);
  let rb0 = select(2u * (s % 4u), s % 4u, paired);
  let rb1 = select(rb0 + 1u, rb0 + 4u, paired);
  var c0 = frag_zero();
  var c1 = frag_zero();
  var c2 = frag_zero();
  var c3 = frag_zero();
  var c4 = frag_zero();
  var c5 = frag_zero();
  var c6 = frag_zero();
  var c7 = frag_zero();

  var wv = fetch_w(w_row, 16u * wk);
  var xv = fetch_x(t0 + xt, xk);
  for (var k0 = 0u; k0 < part.cols; k0 += K_STEP) {
    // @unroll
    for (var c = 0u; c < 4u; c++) {
      let at = (16u * wk + 4u * c) * W_STRIDE + wi;
      ws[at] = f16(wv[c].x);
      ws[at + W_STRIDE] = f16(wv[c].y);
      ws[at + 2u * W_STRIDE] = f16(wv[c].z);
      ws[at + 3u * W_STRIDE] = f16(wv[c].w);
    }
    // @unroll
    for (var j = 0u; j < x_per_thread; j++) { xs[xt * STRIDE + xk + j] = f16(xv[j]); }
    workgroupBarrier();

    let k1 = k0 + K_STEP;
    if (k1 < cols) {
      wv = fetch_w(w_row, k1 + 16u * wk);
      xv = fetch_x(t0 + xt, k1 + xk);
    }

    // @unroll
    for (var h = 0u; h < 2u; h++) {
      let kk = 16u * h;
      let b0 = load_b(kk * W_STRIDE + rb0 * 16u);
      let b1 = load_b(kk * W_STRIDE + rb1 * 16u);
      let a0 = load_a(tb0 * 16u * STRIDE + kk);
      c0 = mma(a0, b0, c0);
      c1 = mma(a0, b1, c1);
      let a1 = load_a((tb0 + 1u) * 16u * STRIDE + kk);
      c2 = mma(a1, b0, c2);
      c3 = mma(a1, b1, c3);
      if (token_blocks == 4u) {
        let a2 = load_a((tb0 + 2u) * 16u * STRIDE + kk);
        c4 = mma(a2, b0, c4);
        c5 = mma(a2, b1, c5);
        let a3 = load_a((tb0 + 3u) * 16u * STRIDE + kk);
        c6 = mma(a3, b0, c6);
        c7 = mma(a3, b1, c7);
      }
    }
    workgroupBarrier();
  }

  put_blocks(c0, c1, n0, t0 + tb0 * 16u, rb0, rb1);
  put_blocks(c2, c3, n0, t0 + (tb0 + 1u) * 16u, rb0, rb1);
  if (token_blocks == 4u) {
    put_blocks(c4, c5, n0, t0 + (tb0 + 2u) * 16u, rb0, rb1);
    put_blocks(c6, c7, n0, t0 + (tb0 + 3u) * 16u, rb0, rb1);
  }
}

// This invocation's 8 values of fragment `c`: row lane / 2, columns 8 (lane % 2) .. + 7, through its
// subgroup's staging (every invocation of the workgroup calls it, for the barriers).
fn unstage(c: frag_c) -> array<f32, 8> {
  let at = subgroup * 256u;
  store_c(c, at);
  workgroupBarrier();
  var v: array<f32, 8>;
  let from_at = at + (lane / 2u) * OUT_STRIDE + 8u * (lane % 2u);
  // @unroll
  for (var j = 0u; j < 8u; j++) { v[j] = cs[from_at + j]; }
  workgroupBarrier();
  return v;
}

// Outputs of the 16 tokens from t (those below m) at row blocks rb0 (accumulator `lo`) and rb1 (`hi`):
// written as they are, or when paired silu(gate) · up at the 16 rows of rb0.
fn put_blocks(lo: frag_c, hi: frag_c, n0: u32, t: u32, rb0: u32, rb1: u32) {
  let token = t + lane / 2u;
  let col = 8u * (lane % 2u);
  let a = unstage(lo);
  let b = unstage(hi);
  if (paired) {
    // @unroll
    for (var j = 0u; j < 8u; j++) {
      let r = n0 + rb0 * 16u + col + j;
      if (token < step.n_tokens && r < w_rows) { y[token * out_stride + r] = silu(a[j]) * b[j]; }
    }
    return;
  }
  // @unroll
  for (var j = 0u; j < 8u; j++) {
    put_y(token, n0 + rb0 * 16u + col + j, a[j]);
    put_y(token, n0 + rb1 * 16u + col + j, b[j]);
  }
}

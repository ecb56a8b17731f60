// Matrix-vector product for decode: y[t][first_row + r] = Σ_c W[r][c] · x[t][c] for a few tokens t < m,
// with W kept in its GGUF type (decoded in registers by the dequantisation library, wgsl/dequant.wgsl,
// spliced in at DEQUANT).
//
// Each workgroup computes `rows_per_wg` consecutive weight rows for `tokens_per_wg` tokens. Its threads walk
// the rows sixteen elements at a time with stride `wg_size` (neighbouring threads read neighbouring words of
// a row; a block's scales are decoded once per sixteen weights), keep the x values of their columns in
// registers across the rows, accumulate in f32, and finish with a tree reduction in workgroup memory.
//
// binding 0: W, array<u32>: the raw rows of one weight part; row r starts at byte r · row_bytes (read)
// binding 1: x, array<f32>: activations [m][cols], row-major (read)
// binding 2: y, array<f32>: outputs [m][out_stride], row-major; this part writes columns
//            first_row .. first_row + rows (read_write)
// binding 3: step, uniform: n_tokens (= m, the tokens of this step), pos0 (unused here)
// binding 4: part, uniform: rows (in this part), first_row, out_stride (rows of the whole weight), cols
//            (elements per row), row_bytes
//
// Dispatch: (x, y) folds ceil(rows / rows_per_wg) workgroups over a 2-D grid (x ≤ 65535),
//           z = ceil(max_m / tokens_per_wg). Workgroups past `m` or past `rows` do nothing.

struct Step {
  n_tokens: u32,
  pos0: u32,
}

struct Part {
  rows: u32,
  first_row: u32,
  out_stride: u32,
  cols: u32,
  row_bytes: u32,
}

// Threads per workgroup (a power of two).
override wg_size: u32 = 128u;
// Weight rows per workgroup (≤ MAX_ROWS).
override rows_per_wg: u32 = 4u;
// Tokens per workgroup (≤ MAX_TOKENS).
override tokens_per_wg: u32 = 1u;

const MAX_ROWS = 8u;
const MAX_TOKENS = 8u;

@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> step: Step;
@group(0) @binding(4) var<uniform> part: Part;

// Copies of part.cols and part.row_bytes (the dequantisation library reads `cols`).
var<private> cols: u32;
var<private> row_bytes: u32;

var<workgroup> partial: array<f32, wg_size * rows_per_wg * tokens_per_wg>;

{{DEQUANT}}

// x[t][e..e+3], zero past the row end.
fn load_x(t: u32, e: u32) -> vec4f {
  let at = t * cols + e;
  if (e + 4u <= cols) { return vec4f(x[at], x[at + 1u], x[at + 2u], x[at + 3u]); }
  var v = vec4f(0.0);
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    if (e + i < cols) { v[i] = x[at + i]; }
  }
  return v;
}

@compute @workgroup_size(wg_size)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(num_workgroups) groups: vec3u,
  @builtin(local_invocation_index) tid: u32,
) {
  cols = part.cols;
  row_bytes = part.row_bytes;
  let m = step.n_tokens;
  let rows = part.rows;
  let row0 = (wid.x + wid.y * groups.x) * rows_per_wg;
  let t0 = wid.z * tokens_per_wg;
  if (row0 >= rows || t0 >= m) { return; }
  let nt = min(tokens_per_wg, m - t0);
  let nr = min(rows_per_wg, rows - row0);

  var acc: array<f32, MAX_ROWS * MAX_TOKENS>; // zero-initialised

  // Main part: sixteen columns per thread and step (scales decoded once per 16 weights).
  let n16 = cols / 16u;
  for (var u = tid; u < n16; u += wg_size) {
    let e = 16u * u;
    var xv: array<array<vec4f, 4>, MAX_TOKENS>;
    // @unroll
    for (var t = 0u; t < tokens_per_wg; t++) {
      if (t < nt) {
        let at = (t0 + t) * cols + e;
        // @unroll
        for (var c = 0u; c < 4u; c++) {
          let a = at + 4u * c;
          xv[t][c] = vec4f(x[a], x[a + 1u], x[a + 2u], x[a + 3u]);
        }
      }
    }
    // @unroll
    for (var r = 0u; r < rows_per_wg; r++) {
      if (r < nr) {
        let w = dq16((row0 + r) * row_bytes, e);
        // @unroll
        for (var t = 0u; t < tokens_per_wg; t++) {
          acc[r * MAX_TOKENS + t] += dot(w[0], xv[t][0]) + dot(w[1], xv[t][1]) + dot(w[2], xv[t][2]) +
            dot(w[3], xv[t][3]);
        }
      }
    }
  }
  // Tail: the last cols % 16 columns, four at a time (only unquantised types have such rows).
  let units = (cols + 3u) / 4u;
  for (var u = 4u * n16 + tid; u < units; u += wg_size) {
    let e = 4u * u;
    var xv: array<vec4f, MAX_TOKENS>;
    // @unroll
    for (var t = 0u; t < tokens_per_wg; t++) {
      if (t < nt) { xv[t] = load_x(t0 + t, e); }
    }
    // @unroll
    for (var r = 0u; r < rows_per_wg; r++) {
      if (r < nr) {
        let w = dq4((row0 + r) * row_bytes, e);
        // @unroll
        for (var t = 0u; t < tokens_per_wg; t++) {
          acc[r * MAX_TOKENS + t] += dot(w, xv[t]);
        }
      }
    }
  }

  // @unroll
  for (var r = 0u; r < rows_per_wg; r++) {
    // @unroll
    for (var t = 0u; t < tokens_per_wg; t++) {
      partial[(r * tokens_per_wg + t) * wg_size + tid] = acc[r * MAX_TOKENS + t];
    }
  }
  workgroupBarrier();
  for (var stride = wg_size / 2u; stride > 0u; stride /= 2u) {
    if (tid < stride) {
      for (var p = 0u; p < rows_per_wg * tokens_per_wg; p++) {
        partial[p * wg_size + tid] += partial[p * wg_size + tid + stride];
      }
    }
    workgroupBarrier();
  }
  let pairs = rows_per_wg * tokens_per_wg;
  if (tid < pairs) {
    let r = tid / tokens_per_wg;
    let t = tid % tokens_per_wg;
    if (r < nr && t < nt) {
      y[(t0 + t) * part.out_stride + part.first_row + row0 + r] = partial[tid * wg_size];
    }
  }
}

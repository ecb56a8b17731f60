// Matrix-matrix product for prefill: Y[t][first_row + r] = Σ_c X[t][c] · W[r][c] for t < m, with W kept in
// its GGUF type (decoded by the dequantisation library, wgsl/dequant.wgsl, spliced in at DEQUANT, while it
// is staged in workgroup memory).
//
// Tiling: a workgroup of 16 × 16 threads computes a 64-token × 64-row output tile; each thread a 4 × 4
// micro-tile with f32 accumulators. The K loop takes 32 columns per step (one legacy block, or an eighth of a
// K-quant block): half the threads dequantise the W tile [64 rows][32] into workgroup memory while the other
// half copy the X tile [64 tokens][32] beside it, both stored k-major so the inner loop reads one vec4 of each
// per k.
//
// binding 0: W, array<u32>: the raw rows of one weight part; row r starts at byte r · row_bytes (read)
// binding 1: x, array<f32>: activations [m][cols], row-major (read)
// binding 2: y, array<f32>: outputs [m][out_stride], row-major; this part writes columns
//            first_row .. first_row + rows (read_write)
// binding 3: step, uniform: n_tokens (= m, the tokens of this step), pos0 (unused here)
// binding 4: part, uniform: rows (in this part), first_row, out_stride (rows of the whole weight), cols
//            (elements per row), row_bytes
//
// Dispatch: x = ceil(rows / 64), y = ceil(max_m / 64). Tiles past `m` return at once.

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


const TILE = 64u;
const BK = 32u;
const THREADS = 256u;

@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> step: Step;
@group(0) @binding(4) var<uniform> part: Part;

// Copies of part.cols and part.row_bytes (the dequantisation library reads `cols`).
var<private> cols: u32;
var<private> row_bytes: u32;

// [k][i / 4] for k < BK and i < TILE: vec4 of tokens (xs) or weight rows (ws) 4i'..4i'+3 at column k.
var<workgroup> xs: array<vec4f, BK * TILE / 4u>;
var<workgroup> ws: array<vec4f, BK * TILE / 4u>;

{{DEQUANT}}

fn load_x(t: u32, e: u32) -> vec4f {
  let at = t * cols + e;
  if (e + 4u <= cols) { return vec4f(x[at], x[at + 1u], x[at + 2u], x[at + 3u]); }
  var v = vec4f(0.0);
  for (var i = 0u; i < 4u; i++) {
    if (e + i < cols) { v[i] = x[at + i]; }
  }
  return v;
}

@compute @workgroup_size(16, 16)
fn main(
  @builtin(workgroup_id) wid: vec3u,
  @builtin(local_invocation_id) lid: vec3u,
  @builtin(local_invocation_index) tid: u32,
) {
  cols = part.cols;
  row_bytes = part.row_bytes;
  let m = step.n_tokens;
  let rows = part.rows;
  let n0 = wid.x * TILE;
  let t0 = wid.y * TILE;
  if (t0 >= m) { return; }

  var acc: array<vec4f, 4>; // acc[i][j]: token t0 + 4·lid.y + i, row n0 + 4·lid.x + j
  for (var i = 0u; i < 4u; i++) { acc[i] = vec4f(0.0); }

  for (var k0 = 0u; k0 < part.cols; k0 += BK) {
    // Stage: threads 0..127 decode the W tile, sixteen columns of one row each (a block's scales once);
    // threads 128..255 copy the X tile, four (token, 4-column) units each.
    if (tid < THREADS / 2u) {
      let i = tid / (BK / 16u);               // weight row within the tile
      let kq = tid % (BK / 16u);              // which 16 columns
      let e = k0 + 16u * kq;
      var w: array<vec4f, 4>;
      if (n0 + i < rows) {
        if (e + 16u <= cols) {
          w = dq16((n0 + i) * row_bytes, e);
        } else {
          for (var c = 0u; c < 4u; c++) {
            if (e + 4u * c < cols) { w[c] = dq4((n0 + i) * row_bytes, e + 4u * c); }
          }
        }
      }
      for (var c = 0u; c < 16u; c++) {
        ws[(16u * kq + c) * (TILE / 4u) + i / 4u][i % 4u] = w[c / 4u][c % 4u];
      }
    } else {
      for (var s = 0u; s < 4u; s++) {
        let unit = (tid - THREADS / 2u) + s * (THREADS / 2u);
        let i = unit / (BK / 4u);             // token within the tile
        let kq = unit % (BK / 4u);            // which 4 columns
        let e = k0 + 4u * kq;
        var a = vec4f(0.0);
        if (t0 + i < m && e < cols) { a = load_x(t0 + i, e); }
        for (var c = 0u; c < 4u; c++) {
          xs[(4u * kq + c) * (TILE / 4u) + i / 4u][i % 4u] = a[c];
        }
      }
    }
    workgroupBarrier();
    for (var k = 0u; k < BK; k++) {
      let a = xs[k * (TILE / 4u) + lid.y];
      let b = ws[k * (TILE / 4u) + lid.x];
      acc[0] += a.x * b;
      acc[1] += a.y * b;
      acc[2] += a.z * b;
      acc[3] += a.w * b;
    }
    workgroupBarrier();
  }

  for (var i = 0u; i < 4u; i++) {
    let t = t0 + 4u * lid.y + i;
    if (t < m) {
      for (var j = 0u; j < 4u; j++) {
        let r = n0 + 4u * lid.x + j;
        if (r < rows) { y[t * part.out_stride + part.first_row + r] = acc[i][j]; }
      }
    }
  }
}

// What the prefill product kernels wgsl/matmul.wgsl and wgsl/matmul_coop.wgsl share (included by both):
// the step and part uniforms, the Q/K/V and gate/up shapes, the bindings (see the including kernel for
// their layout), the workgroup's weight and output chosen by the entry point, and fetch_w, which decodes
// sixteen columns of a weight row with the dequantisation library's copies for W_a, W_b and W_c (names
// suffixed _a, _b, _c, spliced in at DEQUANT_A/B/C).

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

// Weight rows per workgroup tile, and per weight in a paired (`swiglu`) tile.
const TILE_ROWS = 128u;
const HALF_ROWS = 64u;

// `qkv`: rows and bytes per row of Q's, K's and V's weights; `swiglu`: rows_a (rows of the gate and up
// weights), row_bytes_a (gate's) and row_bytes_b (up's).
override rows_a: u32 = 1u;
override rows_b: u32 = 1u;
override rows_c: u32 = 1u;
override row_bytes_a: u32 = 1u;
override row_bytes_b: u32 = 1u;
override row_bytes_c: u32 = 1u;

@group(0) @binding(0) var<storage, read> W_a: array<u32>;
@group(0) @binding(5) var<storage, read> W_b: array<u32>;
@group(0) @binding(6) var<storage, read> W_c: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(7) var<storage, read_write> y_b: array<f32>;
@group(0) @binding(8) var<storage, read_write> y_c: array<f32>;
@group(0) @binding(3) var<uniform> step: Step;
@group(0) @binding(4) var<uniform> part: Part;

// The workgroup's weight and output, set by the entry point: elements per row (the dequantisation library
// reads `cols`), whether the tile is paired (`swiglu`: gate rows, then the same up rows, written as
// silu(gate) · up), which weight (0 = W_a, 1 = W_b, 2 = W_c; 0 in `main`), its rows and bytes per row, and
// where its outputs go (row stride and first column of y, y_b or y_c; y when paired). In a paired tile,
// `which` and `row_bytes` are those of the weight this thread stages, set per thread by the kernel.
var<private> cols: u32;
var<private> paired: bool;
var<private> which: u32;
var<private> w_rows: u32;
var<private> row_bytes: u32;
var<private> out_stride: u32;
var<private> out_first: u32;

{{DEQUANT_A}}
{{DEQUANT_B}}
{{DEQUANT_C}}

// The weight row that tile row `wi` (of TILE_ROWS) of a workgroup starting at row n0 stages: n0 + wi, or in a
// paired tile (`swiglu`) rows 0..63 from the gate weight and 64..127 the same rows of the up weight, for
// which this thread's `which` and `row_bytes` are set here (a warp stages 32 consecutive tile rows, so it
// reads one weight).
fn staged_row(n0: u32, wi: u32) -> u32 {
  if (!paired) { return n0 + wi; }
  which = wi / HALF_ROWS;
  row_bytes = select(row_bytes_a, row_bytes_b, which == 1u);
  return n0 + wi % HALF_ROWS;
}

// Columns e..e+15 of row `r` of weight `which` (zero past the row end or past its rows).
fn fetch_w(r: u32, e: u32) -> array<vec4f, 4> {
  var w: array<vec4f, 4>;
  if (r >= w_rows || e >= cols) { return w; }
  let base = r * row_bytes;
  if (e + 16u <= cols) {
    if (which == 0u) { return dq16_a(base, e); }
    if (which == 1u) { return dq16_b(base, e); }
    return dq16_c(base, e);
  }
  // @unroll
  for (var c = 0u; c < 4u; c++) {
    if (e + 4u * c < cols) {
      if (which == 0u) {
        w[c] = dq4_a(base, e + 4u * c);
      } else if (which == 1u) {
        w[c] = dq4_b(base, e + 4u * c);
      } else {
        w[c] = dq4_c(base, e + 4u * c);
      }
    }
  }
  return w;
}

// The entry points' choice of weight and output: `main` (one weight part, outputs at its columns of y),
// `qkv` (the tile's weight among Q, K and V by its row tile; returns the tile's index within that weight)
// and `swiglu` (gate and up, paired). Each takes the workgroup's column along the rows of the grid.
fn select_main() {
  cols = part.cols;
  paired = false;
  which = 0u;
  w_rows = part.rows;
  row_bytes = part.row_bytes;
  out_stride = part.out_stride;
  out_first = part.first_row;
}

fn select_qkv(tile: u32) -> u32 {
  cols = part.cols;
  paired = false;
  let tiles_a = (rows_a + TILE_ROWS - 1u) / TILE_ROWS;
  let tiles_b = (rows_b + TILE_ROWS - 1u) / TILE_ROWS;
  var t = tile;
  if (t < tiles_a) {
    which = 0u;
    w_rows = rows_a;
    row_bytes = row_bytes_a;
  } else if (t < tiles_a + tiles_b) {
    which = 1u;
    w_rows = rows_b;
    row_bytes = row_bytes_b;
    t -= tiles_a;
  } else {
    which = 2u;
    w_rows = rows_c;
    row_bytes = row_bytes_c;
    t -= tiles_a + tiles_b;
  }
  out_stride = w_rows;
  out_first = 0u;
  return t;
}

fn select_swiglu() {
  cols = part.cols;
  paired = true;
  w_rows = rows_a;
  out_stride = rows_a;
  out_first = 0u;
}

// The text define STACKED of wgsl/matmul_int8.wgsl: its `stacked` form (attention Q, K and V of one
// quantised input in one dispatch) or stubs for the other forms. One section is spliced in, after the weight
// units (the STACKED section also after the third weight's units, `int8_unit_c` reading W_c).
//
// ==== STACKED ====
// binding 9: W_c, array<u32>: the third weight (V), rows as wgsl/int8_units.wgsl reads them (read)
// binding 7: y_b, f32[m][part_b.out_stride] (read_write): the second weight's (K) output
// binding 8: part_b, uniform Part: the second weight's part (rows, first_row, out_stride, cols, row_bytes)
// binding 10: y_c, f32[m][part_c.out_stride] (read_write): the third weight's output
// binding 11: part_c, uniform Part: the third weight's part

@group(0) @binding(9) var<storage, read> W_c: array<u32>;
@group(0) @binding(7) var<storage, read_write> y_b: array<f32>;
@group(0) @binding(8) var<uniform> part_b: Part;
@group(0) @binding(10) var<storage, read_write> y_c: array<f32>;
@group(0) @binding(11) var<uniform> part_c: Part;

// (weight, first row, the weight's rows) of row tile x: W_a's tiles, then W_b's, then W_c's.
fn stacked_tile(x: u32) -> vec3u {
  let tiles_a = (part.rows + TILE_ROWS - 1u) / TILE_ROWS;
  let tiles_b = (part_b.rows + TILE_ROWS - 1u) / TILE_ROWS;
  if (x < tiles_a) { return vec3u(0u, x * TILE_ROWS, part.rows); }
  if (x < tiles_a + tiles_b) { return vec3u(1u, (x - tiles_a) * TILE_ROWS, part_b.rows); }
  return vec3u(2u, (x - tiles_a - tiles_b) * TILE_ROWS, part_c.rows);
}

// The unit of block `blk` of row `row` (clamped to the weight's last row) of weight `which` (1: W_b, 2: W_c).
fn stacked_fetch(which: u32, row: u32, blk: u32) -> Int8Unit {
  if (which == 1u) { return int8_unit_b(min(row, part_b.rows - 1u) * part_b.row_bytes, blk); }
  return int8_unit_c(min(row, part_c.rows - 1u) * part_c.row_bytes, blk);
}

// Writes a tile's sums (acc[8i + j]: row n0 + tid % 32 + 32i, token t0 + 8 (tid / 32) + j) to the output of
// weight `which`.
fn write_stacked(acc: array<f32, 32>, which: u32, n0: u32, t0: u32, m: u32, tid: u32) {
  var p = part;
  if (which == 1u) { p = part_b; }
  if (which == 2u) { p = part_c; }
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    let r = n0 + tid % 32u + 32u * i;
    // @unroll
    for (var j = 0u; j < 8u; j++) {
      let t = t0 + 8u * (tid / 32u) + j;
      if (r < p.rows && t < m) {
        let at = t * p.out_stride + p.first_row + r;
        if (which == 0u) { y[at] = acc[8u * i + j]; }
        if (which == 1u) { y_b[at] = acc[8u * i + j]; }
        if (which == 2u) { y_c[at] = acc[8u * i + j]; }
      }
    }
  }
}

// ==== NONE ====
// Stubs for the plain and paired forms (never called: `stacked` is false there); no bindings.

fn stacked_tile(x: u32) -> vec3u {
  return vec3u(0u);
}

fn stacked_fetch(which: u32, row: u32, blk: u32) -> Int8Unit {
  var unit: Int8Unit;
  return unit;
}

fn write_stacked(acc: array<f32, 32>, which: u32, n0: u32, t0: u32, m: u32, tid: u32) {}

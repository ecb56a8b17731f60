// The FFN's gate and up products for SwiGLU, shared by wgsl/matvec_fast.wgsl's `swiglu` entry and phase f
// of wgsl/matvec_chain.wgsl: accumulate (wgsl/matvec_units.wgsl) for two weights of the same type and
// shape at once, so that one x value per unit and token serves both. Written against the `swiglu` entry's
// names: the units of the gate weight (suffix a) and of the up weight (suffix b), rows_a and row_bytes_a/b,
// cols, rows_per_wg, units_per_step, x_int8, x_ready; the chain renames them to its phase f's (see
// src/gpu/ops/matvec_chain.ts).

// A thread's sums for rows row0 .. and tokens t0 ..: acc[r · MAX_TOKENS + t] of the gate and of up.
struct GateUpSums {
  gate: array<f32, MAX_ROWS * MAX_TOKENS>,
  up: array<f32, MAX_ROWS * MAX_TOKENS>,
}

// As accumulate: rows row0 .. row0 + rows_per_wg − 1 (clamped to the last row) of gate and up, tokens
// t0 .. t0 + nt − 1; the first step's weight loads are issued before x_ready() and the int8 quantisation of
// x. Every thread of the workgroup must call it.
fn accumulate_gate_up(row0: u32, t0: u32, nt: u32, tid: u32) -> GateUpSums {
  var sums: GateUpSums;
  let last = rows_a - 1u;
  let units = (cols + UNIT_ELEMS_a - 1u) / UNIT_ELEMS_a;
  var raw_gate = load_step_a(row_bytes_a, row0, last, tid, units);
  var raw_up = load_step_b(row_bytes_b, row0, last, tid, units);
  x_ready(tid);
  if (x_int8 == 1u) { stage_int8_a(t0, nt, tid); }
  for (var u0 = tid; u0 < units; u0 += wg_size * units_per_step) {
    if (u0 != tid) {
      raw_gate = load_step_a(row_bytes_a, row0, last, u0, units);
      raw_up = load_step_b(row_bytes_b, row0, last, u0, units);
    }
    // @unroll
    for (var k = 0u; k < units_per_step; k++) {
      let u = u0 + k * wg_size;
      if (u < units) {
        // @unroll
        for (var t = 0u; t < tokens_per_wg; t++) {
          if (t < nt && x_int8 == 1u) {
            // @unroll
            for (var r = 0u; r < rows_per_wg; r++) {
              let q = r * MAX_TOKENS + t;
              sums.gate[q] += unit_dot_int8_a(raw_gate[k * MAX_ROWS + r], u, t * (cols / 16u));
              sums.up[q] += unit_dot_int8_b(raw_up[k * MAX_ROWS + r], u, t * (cols / 16u));
            }
          } else if (t < nt) {
            let xs = unit_x_a((t0 + t) * (cols / 4u), u);
            // @unroll
            for (var r = 0u; r < rows_per_wg; r++) {
              let q = r * MAX_TOKENS + t;
              sums.gate[q] += unit_dot_a(raw_gate[k * MAX_ROWS + r], xs, u);
              sums.up[q] += unit_dot_b(raw_up[k * MAX_ROWS + r], xs, u);
            }
          }
        }
      }
    }
  }
  return sums;
}

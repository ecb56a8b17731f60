// Sub-block decoding for the decode matrix-vector kernels of wgsl/matvec_fast.wgsl.
//
// This file is a library, not a kernel: src/gpu/ops/matvec_units.ts splices the COMMON section plus the
// sections of one unit kind into a kernel (at UNITS_A / UNITS_B / UNITS_C), with every name declared here
// and the weight binding `W` suffixed per weight (`W_a`, `unit_load_a`, `Raw_a`, …). Every weight type the
// GPU reads has a unit kind: F32, F16 and BF16 twice (an interleaved layout for rows of a multiple of 256
// values, a plain one for the other rows of a multiple of 4; F16 and BF16 share the layout sections HALF and
// HALF_PLAIN and differ only in their value section, F16_VALUES or BF16_VALUES, which defines
// `half_pair`), Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K (the ggml blocks, as
// wgsl/dequant.wgsl and the CPU dequantisers in src/gguf/ read them).
//
// A row is cut into units of UNIT_ELEMS (32) elements, fixed pieces of the type's blocks. One thread takes
// a whole unit of a row at a time: it loads the unit's raw words once (the widest loads the type's block
// alignment allows: 16-byte `vec4u`, 8-byte `vec2u`, or 4-byte `u32` with a 2-byte funnel shift where
// blocks start mid-word), decodes the block scales once per unit, and takes the dot product with the
// unit's x values, which it loads once per token (as vec4f) and shares across all the rows of its
// workgroup.
//
// The including kernel declares
//   `W: array<vec4u>`, `array<vec2u>` or `array<u32>`  the raw rows of the weight (the word type each
//                                         section names),
//   `x: array<vec4f>`                     activations [m][cols] (cols a multiple of 4),
//   `cols`, `wg_size`, `rows_per_wg`, `tokens_per_wg`   override constants (elements per row, threads,
//                                         rows and tokens per workgroup), and consts MAX_ROWS, MAX_TOKENS.
// Every type section defines
//   `UNIT_ELEMS`                                          elements per unit (32); a row has
//                                                         ceil(cols / UNIT_ELEMS) units,
//   `struct Raw`                                          one unit of one row, loaded, scales decoded,
//   `fn unit_load(row_bytes, row, u) -> Raw`              unit u of row `row` (rows of row_bytes bytes),
//   `fn unit_x(xrow, u) -> array<vec4f, 8>`               the unit's 32 x values in the unit's order, from
//                                                         the token row of x starting at vec4 `xrow`,
//   `fn unit_dot(w, xs, u) -> f32`                        Σ weight · x over the unit.
// The COMMON section adds `accumulate`, the per-thread loop over a workgroup's rows and tokens, and the
// helpers several sections share.
//
// Int8 input (override x_int8 = 1 in the including kernel): the kernel first quantises its tokens' x rows
// into workgroup memory, per block of 16 values, as `x_blocks: array<vec4u>` (16 signed bytes, value 4k + i
// in byte i of word k) and `x_scales: array<vec2f>` ((d, d · Σq): x ≈ d · q), token t's blocks from
// t · cols / 16. Each type with an `<TYPE>_INT8` section then defines
//   `fn unit_dot_int8(w, u, xb) -> f32`   Σ weight · x over unit u against the blocks from xb,
// taking the integer products four at a time with dot4I8Packed: a few instructions per 8 weights instead of
// a conversion and a multiply-add per weight, which is what bounds the f32 form on a fast memory. Types
// without such a section get a stub (the host never sets x_int8 for them, see src/gpu/ops/matvec_units.ts).

// ==== COMMON ====
// Q4_K and Q5_K: 6-bit scale and min number s (0..7) of the 12 packed bytes in head.yzw of the block head.
fn k_scale_min(head: vec4u, s: u32) -> vec2f {
  let k = 8u * (s % 4u);
  let a = head.y >> k; // scales[s % 4]
  let b = head.z >> k; // scales[s % 4 + 4]
  let c = head.w >> k; // scales[s % 4 + 8]
  let low = vec2u(a & 63u, b & 63u);
  let high = vec2u((c & 15u) | ((a >> 2u) & 48u), ((c >> 4u) & 15u) | ((b >> 2u) & 48u));
  return vec2f(select(low, high, s >= 4u));
}
// Q4_K and Q5_K: Σ weight · x of unit u from its quant dot products q_lo (first 16 values, sub-block 2j)
// and q_hi (last 16, sub-block 2j + 1), j = (u % 8) / 2: d · (sc · q) − dmin · (m · Σx) per sub-block.
fn k_unit_sum(head: vec4u, u: u32, q_lo: f32, q_hi: f32, xs: array<vec4f, 8>) -> f32 {
  let j = (u % 8u) / 2u;
  let dm = unpack2x16float(head.x);
  let lo = k_scale_min(head, 2u * j);
  let hi = k_scale_min(head, 2u * j + 1u);
  let x_lo = sum4(xs[0] + xs[1] + xs[2] + xs[3]);
  let x_hi = sum4(xs[4] + xs[5] + xs[6] + xs[7]);
  return dm.x * (lo.x * q_lo + hi.x * q_hi) - dm.y * (lo.y * x_lo + hi.y * x_hi);
}
// The four bytes of v as unsigned values.
fn ubytes(v: u32) -> vec4f {
  return vec4f(f32(v & 0xffu), f32((v >> 8u) & 0xffu), f32((v >> 16u) & 0xffu), f32(v >> 24u));
}
// The four bytes of v as signed (int8) values.
fn ibytes(v: u32) -> vec4f {
  let i = bitcast<i32>(v);
  return vec4f(f32(extractBits(i, 0u, 8u)), f32(extractBits(i, 8u, 8u)), f32(extractBits(i, 16u, 8u)),
               f32(extractBits(i, 24u, 8u)));
}
// Low and high nibbles of the four bytes of v.
fn nib_lo(v: u32) -> vec4f {
  return ubytes(v & 0x0f0f0f0fu);
}
fn nib_hi(v: u32) -> vec4f {
  return ubytes((v >> 4u) & 0x0f0f0f0fu);
}
// Bit `bit` of each byte of v, as 0 or 1.
fn bit_of_bytes(v: u32, bit: u32) -> vec4f {
  return ubytes((v >> bit) & 0x01010101u);
}
fn sum4(v: vec4f) -> f32 {
  return dot(v, vec4f(1.0));
}
// The 2-bit fields at bit `shift` of the four bytes of v (Q2_K, Q3_K).
fn crumbs(v: u32, shift: u32) -> vec4f {
  return ubytes((v >> shift) & 0x03030303u);
}
// Bits 0..3 of h moved to bit 4 of bytes 0..3: the fifth bits of four Q5_0 / Q5_1 quants. The four copies
// of h that the product adds (shifted by 0, 7, 14 and 21 bits) do not overlap, so nothing carries.
fn fifth_bits(h: u32) -> u32 {
  return (((h & 15u) * 0x00204081u) & 0x01010101u) << 4u;
}
// Bytes 2 .. 17 of the five consecutive words `first`, next.x .. next.w: 16 bytes read at a 2-byte aligned
// offset.
fn skip_half(first: u32, next: vec4u) -> vec4u {
  return (vec4u(first, next.xyz) >> vec4u(16u)) | (next << vec4u(16u));
}
// Bytes 2 .. 9 of the three consecutive words `first`, next.x, next.y.
fn skip_half2(first: u32, next: vec2u) -> vec2u {
  return (vec2u(first, next.x) >> vec2u(16u)) | (next << vec2u(16u));
}
// Σ (q − bias) · x over a 32-element block of 4-bit quants (Q4_0, Q4_1): element l < 16 is the low nibble
// of byte l of qs, element l + 16 the high one.
fn q4_dot(qs: vec4u, xs: array<vec4f, 8>, bias: f32) -> f32 {
  var s = 0.0;
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    s += dot(nib_lo(qs[i]) - bias, xs[i]) + dot(nib_hi(qs[i]) - bias, xs[i + 4u]);
  }
  return s;
}
// Σ (q − bias) · x over a 32-element block of 5-bit quants (Q5_0, Q5_1): the nibbles as q4_dot, plus 16 ×
// bit l of qh for element l.
fn q5_dot(qs: vec4u, qh: u32, xs: array<vec4f, 8>, bias: f32) -> f32 {
  var s = 0.0;
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    let lo = ubytes((qs[i] & 0x0f0f0f0fu) | fifth_bits(qh >> (4u * i)));
    let hi = ubytes(((qs[i] >> 4u) & 0x0f0f0f0fu) | fifth_bits(qh >> (4u * i + 16u)));
    s += dot(lo - bias, xs[i]) + dot(hi - bias, xs[i + 4u]);
  }
  return s;
}
// Σ x over a unit's 32 x values.
fn x_sum(xs: array<vec4f, 8>) -> f32 {
  return sum4(xs[0] + xs[1] + xs[2] + xs[3] + xs[4] + xs[5] + xs[6] + xs[7]);
}
// Units of 32 consecutive elements (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1): the x values of unit u.
fn x_run(xrow: u32, u: u32) -> array<vec4f, 8> {
  let a = xrow + 8u * u;
  return array<vec4f, 8>(x[a], x[a + 1u], x[a + 2u], x[a + 3u], x[a + 4u], x[a + 5u], x[a + 6u], x[a + 7u]);
}
// Q2_K and Q3_K: unit c = u % 8 of 256-element block u / 8 holds the elements 128n + 32j + 8(c % 4) + i
// (n = c / 4, j < 4, i < 8), four runs of 8: vec4s 2j and 2j + 1 of the result are run j.
fn x_runs8(xrow: u32, u: u32) -> array<vec4f, 8> {
  let c = u % 8u;
  let a = xrow + (u / 8u) * 64u + (c / 4u) * 32u + (c % 4u) * 2u;
  return array<vec4f, 8>(x[a], x[a + 1u], x[a + 8u], x[a + 9u], x[a + 16u], x[a + 17u], x[a + 24u],
                         x[a + 25u]);
}
// Plain float rows (F32_PLAIN, F16_PLAIN, BF16_PLAIN): whether vec4 i (elements 32u + 4i .. + 3) of unit u
// lies within the row. cols is a multiple of 4, so a vec4 is wholly in or out; only the last unit of a row
// that is not a multiple of 32 has vec4s past the end (a constant true otherwise).
fn quad_in_row(u: u32, i: u32) -> bool {
  return cols % 32u == 0u || 32u * u + 4u * i < cols;
}
// Plain float rows: the x values of unit u (elements 32u .. 32u + 31), zero past the row end.
fn x_plain(xrow: u32, u: u32) -> array<vec4f, 8> {
  var xs: array<vec4f, 8>;
  // @unroll
  for (var i = 0u; i < 8u; i++) {
    if (quad_in_row(u, i)) { xs[i] = x[xrow + 8u * u + i]; }
  }
  return xs;
}
// Q4_K and Q5_K with int8 input (x_int8 = 1): Σ weight · x of unit u (c = u % 8, j = c / 2) from its quants
// as bytes, w_lo for the 16 values of sub-block 2j (x block 16 (u / 8) + 4j + c % 2 from xb) and w_hi for
// those of sub-block 2j + 1 (two x blocks on): d · (sc · Σ q q_x d_x) − dmin · (m · d_x Σ q_x) per sub-block.
fn k_unit_int8(head: vec4u, u: u32, xb: u32, w_lo: vec4u, w_hi: vec4u) -> f32 {
  let c = u % 8u;
  let j = c / 2u;
  let b = xb + (u / 8u) * 16u + j * 4u + c % 2u;
  let x_lo = x_scales[b];
  let x_hi = x_scales[b + 2u];
  let q_lo = x_lo.x * dot16_int8(w_lo, x_blocks[b]);
  let q_hi = x_hi.x * dot16_int8(w_hi, x_blocks[b + 2u]);
  let dm = unpack2x16float(head.x);
  let lo = k_scale_min(head, 2u * j);
  let hi = k_scale_min(head, 2u * j + 1u);
  return dm.x * (lo.x * q_lo + hi.x * q_hi) - dm.y * (lo.y * x_lo.y + hi.y * x_hi.y);
}
// Σ q_w · q_x over 16 values: four words of weight bytes against the four words of an int8 x block, four
// products per dot4I8Packed (weight bytes are signed 8-bit values; nibble and 6-bit quants are positive).
fn dot16_int8(w: vec4u, xq: vec4u) -> f32 {
  return f32(dot4I8Packed(w.x, xq.x) + dot4I8Packed(w.y, xq.y) + dot4I8Packed(w.z, xq.z) + dot4I8Packed(w.w, xq.w));
}
// The units of one step of `accumulate` ([step unit k][row r]): units u0, u0 + wg_size, … (units_per_step
// of them; past the last unit a repeat of it, not used) of the rows row0 .. (clamped to last_row).
fn load_step(row_bytes: u32, row0: u32, last_row: u32, u0: u32, units: u32)
    -> array<Raw, MAX_ROWS * MAX_UNITS_PER_STEP> {
  var raw: array<Raw, MAX_ROWS * MAX_UNITS_PER_STEP>;
  // @unroll
  for (var k = 0u; k < units_per_step; k++) {
    let u = min(u0 + k * wg_size, units - 1u);
    // @unroll
    for (var r = 0u; r < rows_per_wg; r++) {
      raw[k * MAX_ROWS + r] = unit_load(row_bytes, min(row0 + r, last_row), u);
    }
  }
  return raw;
}
// The sums Σ_c W[row][c] · x[t][c] of this thread's units for the rows row0 .. row0 + rows_per_wg − 1
// (clamped to last_row: rows past it repeat it and are not to be written) and the tokens t0 .. t0 + nt − 1,
// at acc[r · MAX_TOKENS + t]. Threads take units tid, tid + wg_size, …, units_per_step of them per step:
// the loads of every row of all those units are issued before any arithmetic on them. With x_int8 = 1 the
// x values come from the kernel's int8 copy (x_blocks, see the INT8 sections below) instead of x: the
// kernel's stage_int8 makes it here when `stage` is true (a workgroup's first row group; later ones reuse
// it), after the first step's weight loads were issued, so that their latency overlaps the quantisation
// (every thread of the workgroup must call this function).
fn accumulate(row_bytes: u32, row0: u32, last_row: u32, t0: u32, nt: u32, tid: u32, stage: bool)
    -> array<f32, MAX_ROWS * MAX_TOKENS> {
  var acc: array<f32, MAX_ROWS * MAX_TOKENS>;
  let units = (cols + UNIT_ELEMS - 1u) / UNIT_ELEMS;
  var raw: array<Raw, MAX_ROWS * MAX_UNITS_PER_STEP>;
  if (x_int8 == 1u) {
    raw = load_step(row_bytes, row0, last_row, tid, units);
    if (stage) { stage_int8(t0, nt, tid); }
  }
  for (var u0 = tid; u0 < units; u0 += wg_size * units_per_step) {
    if (x_int8 == 0u || u0 != tid) { raw = load_step(row_bytes, row0, last_row, u0, units); }
    step_products(&acc, raw, u0, t0, nt, units);
  }
  return acc;
}

// The products of one loaded step `raw` (units u0, u0 + wg_size, … of the rows) added into *acc.
fn step_products(
  acc: ptr<function, array<f32, MAX_ROWS * MAX_TOKENS>>,
  raw: array<Raw, MAX_ROWS * MAX_UNITS_PER_STEP>,
  u0: u32,
  t0: u32,
  nt: u32,
  units: u32,
) {
  // @unroll
  for (var k = 0u; k < units_per_step; k++) {
    let u = u0 + k * wg_size;
    if (u < units) {
      // @unroll
      for (var t = 0u; t < tokens_per_wg; t++) {
        if (t < nt) {
          if (x_int8 == 1u) {
            // @unroll
            for (var r = 0u; r < rows_per_wg; r++) {
              (*acc)[r * MAX_TOKENS + t] += unit_dot_int8(raw[k * MAX_ROWS + r], u, x_block_row(t0, t));
            }
          } else {
            let xs = unit_x((t0 + t) * (cols / 4u), u);
            // @unroll
            for (var r = 0u; r < rows_per_wg; r++) {
              (*acc)[r * MAX_TOKENS + t] += unit_dot(raw[k * MAX_ROWS + r], xs, u);
            }
          }
        }
      }
    }
  }
}
// accumulate with loads a step ahead (the kernel's prefetch_groups = 1): *ahead holds the loaded first
// step of rows row0 …; before the products of each step this issues the loads of the next one, of the same
// rows or, after the last, the first step of rows next_row0 … (the workgroup's next row group, when
// has_next), which it leaves in *ahead. So a workgroup that takes several row groups has loads in flight
// while it multiplies and while it reduces, at the cost of a second step of registers.
fn accumulate_ahead(
  row_bytes: u32,
  row0: u32,
  last_row: u32,
  t0: u32,
  nt: u32,
  tid: u32,
  ahead: ptr<function, array<Raw, MAX_ROWS * MAX_UNITS_PER_STEP>>,
  next_row0: u32,
  has_next: bool,
) -> array<f32, MAX_ROWS * MAX_TOKENS> {
  var acc: array<f32, MAX_ROWS * MAX_TOKENS>;
  let units = (cols + UNIT_ELEMS - 1u) / UNIT_ELEMS;
  let stride = wg_size * units_per_step;
  for (var u0 = tid; u0 < units; u0 += stride) {
    let raw = *ahead;
    if (u0 + stride < units) {
      *ahead = load_step(row_bytes, row0, last_row, u0 + stride, units);
    } else if (has_next) {
      *ahead = load_step(row_bytes, next_row0, last_row, tid, units);
    }
    step_products(&acc, raw, u0, t0, nt, units);
  }
  return acc;
}

// ==== F32 ====
// W: array<vec4u>. Rows of a multiple of 256 values (F32_PLAIN takes the others): unit u holds the eight
// vec4s (u / 8) · 64 + 8i + u % 8 (i < 8) of its row, so the neighbouring threads of one load read
// neighbouring vec4s.
const UNIT_ELEMS = 32u;
struct Raw {
  v: array<vec4u, 8>,
}
fn unit_load(row_bytes: u32, row: u32, u: u32) -> Raw {
  let b = row * (row_bytes / 16u) + (u / 8u) * 64u + u % 8u;
  return Raw(array<vec4u, 8>(W[b], W[b + 8u], W[b + 16u], W[b + 24u], W[b + 32u], W[b + 40u], W[b + 48u],
                             W[b + 56u]));
}
fn unit_x(xrow: u32, u: u32) -> array<vec4f, 8> {
  let a = xrow + (u / 8u) * 64u + u % 8u;
  return array<vec4f, 8>(x[a], x[a + 8u], x[a + 16u], x[a + 24u], x[a + 32u], x[a + 40u], x[a + 48u],
                         x[a + 56u]);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  return dot(bitcast<vec4f>(w.v[0]), xs[0]) + dot(bitcast<vec4f>(w.v[1]), xs[1]) +
    dot(bitcast<vec4f>(w.v[2]), xs[2]) + dot(bitcast<vec4f>(w.v[3]), xs[3]) +
    dot(bitcast<vec4f>(w.v[4]), xs[4]) + dot(bitcast<vec4f>(w.v[5]), xs[5]) +
    dot(bitcast<vec4f>(w.v[6]), xs[6]) + dot(bitcast<vec4f>(w.v[7]), xs[7]);
}

// ==== HALF ====
// W: array<vec4u> (8 halves per vec4), read through half_pair (F16_VALUES or BF16_VALUES). F16 and BF16
// rows of a multiple of 256 values (HALF_PLAIN takes the others): unit u holds the four vec4s
// (u / 8) · 32 + 8i + u % 8 (i < 4) of its row.
const UNIT_ELEMS = 32u;
struct Raw {
  v: array<vec4u, 4>,
}
fn unit_load(row_bytes: u32, row: u32, u: u32) -> Raw {
  let b = row * (row_bytes / 16u) + (u / 8u) * 32u + u % 8u;
  return Raw(array<vec4u, 4>(W[b], W[b + 8u], W[b + 16u], W[b + 24u]));
}
fn unit_x(xrow: u32, u: u32) -> array<vec4f, 8> {
  let a = xrow + 2u * ((u / 8u) * 32u + u % 8u);
  return array<vec4f, 8>(x[a], x[a + 1u], x[a + 16u], x[a + 17u], x[a + 32u], x[a + 33u], x[a + 48u],
                         x[a + 49u]);
}
// Σ of the eight halves of v times x0 (first four) and x1.
fn halves_dot(v: vec4u, x0: vec4f, x1: vec4f) -> f32 {
  return dot(vec4f(half_pair(v.x), half_pair(v.y)), x0) + dot(vec4f(half_pair(v.z), half_pair(v.w)), x1);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  return halves_dot(w.v[0], xs[0], xs[1]) + halves_dot(w.v[1], xs[2], xs[3]) +
    halves_dot(w.v[2], xs[4], xs[5]) + halves_dot(w.v[3], xs[6], xs[7]);
}

// ==== F32_PLAIN ====
// W: array<vec4u>. F32 rows that are not a multiple of 256 values (any multiple of 4): unit u is the
// elements 32u .. 32u + 31 of its row, eight consecutive vec4s. When cols is not a multiple of 32 the last
// unit is ragged: its vec4s past the row end are neither loaded nor counted (see quad_in_row).
const UNIT_ELEMS = 32u;
struct Raw {
  v: array<vec4u, 8>,
}
fn unit_load(row_bytes: u32, row: u32, u: u32) -> Raw {
  let b = row * (row_bytes / 16u) + 8u * u;
  var v: array<vec4u, 8>;
  // @unroll
  for (var i = 0u; i < 8u; i++) {
    if (quad_in_row(u, i)) { v[i] = W[b + i]; }
  }
  return Raw(v);
}
fn unit_x(xrow: u32, u: u32) -> array<vec4f, 8> {
  return x_plain(xrow, u);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  var s = 0.0;
  // @unroll
  for (var i = 0u; i < 8u; i++) { s += dot(bitcast<vec4f>(w.v[i]), xs[i]); }
  return s;
}

// ==== HALF_PLAIN ====
// W: array<vec2u> (4 halves per vec2u: rows of a multiple of 4 values start 8-byte aligned), read through
// half_pair. F16 and BF16 rows that are not a multiple of 256 values: unit u is the elements 32u .. 32u + 31
// of its row, eight consecutive vec2us, the last unit ragged as in F32_PLAIN.
const UNIT_ELEMS = 32u;
struct Raw {
  v: array<vec2u, 8>,
}
fn unit_load(row_bytes: u32, row: u32, u: u32) -> Raw {
  let b = row * (row_bytes / 8u) + 8u * u;
  var v: array<vec2u, 8>;
  // @unroll
  for (var i = 0u; i < 8u; i++) {
    if (quad_in_row(u, i)) { v[i] = W[b + i]; }
  }
  return Raw(v);
}
fn unit_x(xrow: u32, u: u32) -> array<vec4f, 8> {
  return x_plain(xrow, u);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  var s = 0.0;
  // @unroll
  for (var i = 0u; i < 8u; i++) { s += dot(vec4f(half_pair(w.v[i].x), half_pair(w.v[i].y)), xs[i]); }
  return s;
}

// ==== F16_VALUES ====
// The two halves of v (IEEE binary16), for HALF and HALF_PLAIN.
fn half_pair(v: u32) -> vec2f {
  return unpack2x16float(v);
}

// ==== BF16_VALUES ====
// The two bfloat16 values of v, for HALF and HALF_PLAIN.
fn half_pair(v: u32) -> vec2f {
  return vec2f(bitcast<f32>(v << 16u), bitcast<f32>(v & 0xffff0000u));
}

// ==== Q8_0 ====
// W: array<u32>. 34-byte blocks (d f16, qs int8[32]); unit u is block u. Blocks start 2-byte aligned, so a
// unit is nine 4-byte loads, shifted by two bytes when the block starts mid-word.
const UNIT_ELEMS = 32u;
struct Raw {
  d: f32,
  lo: vec4u,
  hi: vec4u,
}
fn unit_load(row_bytes: u32, row: u32, u: u32) -> Raw {
  let at = row * row_bytes + 34u * u;
  let w = at / 4u;
  let a0 = W[w];
  let a1 = W[w + 1u];
  let a2 = W[w + 2u];
  let a3 = W[w + 3u];
  let a4 = W[w + 4u];
  let a5 = W[w + 5u];
  let a6 = W[w + 6u];
  let a7 = W[w + 7u];
  let a8 = W[w + 8u];
  let odd = (at & 2u) != 0u;
  // Aligned: d is the low half of a0 and qs starts two bytes in; odd: d is the high half and qs is a1..a8.
  let lo = select(
    vec4u((a0 >> 16u) | (a1 << 16u), (a1 >> 16u) | (a2 << 16u), (a2 >> 16u) | (a3 << 16u),
          (a3 >> 16u) | (a4 << 16u)),
    vec4u(a1, a2, a3, a4),
    odd,
  );
  let hi = select(
    vec4u((a4 >> 16u) | (a5 << 16u), (a5 >> 16u) | (a6 << 16u), (a6 >> 16u) | (a7 << 16u),
          (a7 >> 16u) | (a8 << 16u)),
    vec4u(a5, a6, a7, a8),
    odd,
  );
  return Raw(unpack2x16float(select(a0, a0 >> 16u, odd)).x, lo, hi);
}
fn unit_x(xrow: u32, u: u32) -> array<vec4f, 8> {
  return x_run(xrow, u);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  return w.d * (dot(ibytes(w.lo.x), xs[0]) + dot(ibytes(w.lo.y), xs[1]) + dot(ibytes(w.lo.z), xs[2]) +
    dot(ibytes(w.lo.w), xs[3]) + dot(ibytes(w.hi.x), xs[4]) + dot(ibytes(w.hi.y), xs[5]) +
    dot(ibytes(w.hi.z), xs[6]) + dot(ibytes(w.hi.w), xs[7]));
}

// ==== Q4_0 ====
// W: array<u32>. 18-byte blocks (d f16, qs[16]); unit u is block u: element l < 16 is the low nibble of
// qs[l], element l + 16 the high one; x = d · (q − 8). Blocks start 2-byte aligned, so a unit is five 4-byte
// loads, shifted by two bytes when the block starts mid-word.
const UNIT_ELEMS = 32u;
struct Raw {
  d: f32,
  qs: vec4u,
}
fn unit_load(row_bytes: u32, row: u32, u: u32) -> Raw {
  let at = row * row_bytes + 18u * u;
  let w = at / 4u;
  let first = W[w];
  let next = vec4u(W[w + 1u], W[w + 2u], W[w + 3u], W[w + 4u]);
  let odd = (at & 2u) != 0u;
  // Aligned: d is the low half of `first` and qs starts two bytes in; odd: d is the high half, qs is `next`.
  return Raw(unpack2x16float(select(first, first >> 16u, odd)).x, select(skip_half(first, next), next, odd));
}
fn unit_x(xrow: u32, u: u32) -> array<vec4f, 8> {
  return x_run(xrow, u);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  return w.d * q4_dot(w.qs, xs, 8.0);
}

// ==== Q4_1 ====
// W: array<u32>. 20-byte blocks (d f16, m f16, qs[16], nibbles as Q4_0); unit u is block u; x = d · q + m.
// Blocks start 4-byte aligned: five 4-byte loads.
const UNIT_ELEMS = 32u;
struct Raw {
  dm: vec2f,
  qs: vec4u,
}
fn unit_load(row_bytes: u32, row: u32, u: u32) -> Raw {
  let w = row * (row_bytes / 4u) + 5u * u;
  return Raw(unpack2x16float(W[w]), vec4u(W[w + 1u], W[w + 2u], W[w + 3u], W[w + 4u]));
}
fn unit_x(xrow: u32, u: u32) -> array<vec4f, 8> {
  return x_run(xrow, u);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  return w.dm.x * q4_dot(w.qs, xs, 0.0) + w.dm.y * x_sum(xs);
}

// ==== Q5_0 ====
// W: array<u32>. 22-byte blocks (d f16, qh u32, qs[16]); unit u is block u: element l < 16 is the low
// nibble of qs[l], element l + 16 the high one, each plus 16 × bit l of qh; x = d · (q − 16). Blocks start
// 2-byte aligned: six 4-byte loads, shifted by two bytes when the block starts mid-word.
const UNIT_ELEMS = 32u;
struct Raw {
  d: f32,
  qh: u32,
  qs: vec4u,
}
fn unit_load(row_bytes: u32, row: u32, u: u32) -> Raw {
  let at = row * row_bytes + 22u * u;
  let w = at / 4u;
  let first = W[w];
  let second = W[w + 1u];
  let rest = vec4u(W[w + 2u], W[w + 3u], W[w + 4u], W[w + 5u]);
  let odd = (at & 2u) != 0u;
  // Aligned: d is the low half of `first`, qh its high half and the low half of `second`, and qs starts
  // two bytes into `second`; odd: d is the high half of `first`, qh is `second` and qs is `rest`.
  return Raw(
    unpack2x16float(select(first, first >> 16u, odd)).x,
    select((first >> 16u) | (second << 16u), second, odd),
    select(skip_half(second, rest), rest, odd),
  );
}
fn unit_x(xrow: u32, u: u32) -> array<vec4f, 8> {
  return x_run(xrow, u);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  return w.d * q5_dot(w.qs, w.qh, xs, 16.0);
}

// ==== Q5_1 ====
// W: array<vec2u>. 24-byte blocks (d f16, m f16, qh u32, qs[16], quants as Q5_0); unit u is block u;
// x = d · q + m. Blocks start 8-byte aligned: three 8-byte loads.
const UNIT_ELEMS = 32u;
struct Raw {
  dm: vec2f,
  qh: u32,
  qs: vec4u,
}
fn unit_load(row_bytes: u32, row: u32, u: u32) -> Raw {
  let b = row * (row_bytes / 8u) + 3u * u;
  let head = W[b];
  return Raw(unpack2x16float(head.x), head.y, vec4u(W[b + 1u], W[b + 2u]));
}
fn unit_x(xrow: u32, u: u32) -> array<vec4f, 8> {
  return x_run(xrow, u);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  return w.dm.x * q5_dot(w.qs, w.qh, xs, 0.0) + w.dm.y * x_sum(xs);
}

// ==== Q2_K ====
// W: array<u32>. 84-byte blocks = 21 words: scales[16] (low nibble scale, high nibble min; words 0..3),
// qs[64] (words 4..19), d f16 and dmin f16 (word 20). Element 128n + 32j + 16k + l has 2 bits at shift 2j
// of qs[32n + 16k + l] and scale byte 8n + 2j + k; x = d · sc · q − dmin · m. Unit c (0..7) of block b is
// qs bytes 8c .. 8c + 7 (words 4 + 2c, 5 + 2c) at all four shifts: the elements 256b + 128n + 32j +
// 8(c % 4) + i (n = c / 4, j < 4, i < 8; see x_runs8), scale bytes 8n + 2j + k with k = (c / 2) % 2.
const UNIT_ELEMS = 32u;
struct Raw {
  q: vec2u,
  // The unit's four scale bytes, for j = 0, 2, 1, 3 in that order.
  sc: u32,
  dm: vec2f,
}
fn unit_load(row_bytes: u32, row: u32, u: u32) -> Raw {
  let b = row * (row_bytes / 4u) + (u / 8u) * 21u;
  let c = u % 8u;
  let n = c / 4u;
  let k = (c / 2u) % 2u;
  // Scale bytes 8n + k and 8n + k + 2 (j = 0, 1) are bytes k and k + 2 of word 2n; j = 2, 3 the same of
  // word 2n + 1.
  let even = (W[b + 2u * n] >> (8u * k)) & 0x00ff00ffu;
  let odd = (W[b + 2u * n + 1u] >> (8u * k)) & 0x00ff00ffu;
  return Raw(vec2u(W[b + 4u + 2u * c], W[b + 5u + 2u * c]), even | (odd << 8u), unpack2x16float(W[b + 20u]));
}
fn unit_x(xrow: u32, u: u32) -> array<vec4f, 8> {
  return x_runs8(xrow, u);
}
// Σ q · x of run j (its quants at shift 2j of the unit's eight bytes, its x values x0 and x1).
fn run_dot(q: vec2u, j: u32, x0: vec4f, x1: vec4f) -> f32 {
  return dot(crumbs(q.x, 2u * j), x0) + dot(crumbs(q.y, 2u * j), x1);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  // Per run, in the order of the scale bytes (j = 0, 2, 1, 3): Σ q · x and Σ x.
  let qx = vec4f(run_dot(w.q, 0u, xs[0], xs[1]), run_dot(w.q, 2u, xs[4], xs[5]), run_dot(w.q, 1u, xs[2], xs[3]),
                 run_dot(w.q, 3u, xs[6], xs[7]));
  let xsum = vec4f(sum4(xs[0] + xs[1]), sum4(xs[4] + xs[5]), sum4(xs[2] + xs[3]), sum4(xs[6] + xs[7]));
  return w.dm.x * dot(nib_lo(w.sc), qx) - w.dm.y * dot(nib_hi(w.sc), xsum);
}

// ==== Q3_K ====
// W: array<u32>. 110-byte blocks: hmask[32], qs[64], scales[12] (16 packed 6-bit scales), d f16; blocks
// start 2-byte aligned. Element 128n + 32j + 16k + l has its low 2 bits at shift 2j of qs[32n + 16k + l],
// its high bit at bit 4n + j of hmask[16k + l] (clear means −4) and scale number s = 8n + 2j + k:
// x = d · (scale − 32) · q. Units as Q2_K: unit c (0..7) is qs bytes 8c .. 8c + 7 and hmask bytes
// 8(c % 4) .. 8(c % 4) + 7 at all four j. Scale s has its low nibble at shift 4n of scales[2j + k] and its
// high two bits at shift 4n + 2(j / 2) of scales[8 + 2(j % 2) + k].
const UNIT_ELEMS = 32u;
struct Raw {
  hm: vec2u,
  q: vec2u,
  // The unit's four 6-bit scales (before the −32), one per byte, for j = 0, 2, 1, 3 in that order.
  sc: u32,
  d: f32,
}
// 8 bytes at the even byte offset `at` (three 4-byte loads, shifted when `at` is not 4-aligned).
fn load8(at: u32) -> vec2u {
  let w = at / 4u;
  let first = W[w];
  let next = vec2u(W[w + 1u], W[w + 2u]);
  return select(vec2u(first, next.x), skip_half2(first, next), (at & 2u) != 0u);
}
fn unit_load(row_bytes: u32, row: u32, u: u32) -> Raw {
  let base = row * row_bytes + (u / 8u) * 110u;
  let c = u % 8u;
  let n = c / 4u;
  let k = (c / 2u) % 2u;
  // scales[0..12] and d: bytes 96 .. 109 of the block, within four words.
  let w = (base + 96u) / 4u;
  let a = vec3u(W[w], W[w + 1u], W[w + 2u]);
  let last = W[w + 3u];
  let odd = (base & 2u) != 0u;
  let scales = select(a, (a >> vec3u(16u)) | (vec3u(a.yz, last) << vec3u(16u)), odd);
  let d = unpack2x16float(select(last, last >> 16u, odd)).x;
  // Low nibbles: scales[k] and scales[k + 2] (j = 0, 1) are bytes k and k + 2 of scales.x; j = 2, 3 the
  // same of scales.y.
  let lows = ((scales.x >> (8u * k)) & 0x00ff00ffu) | (((scales.y >> (8u * k)) & 0x00ff00ffu) << 8u);
  // High bits: byte k of scales.z holds j = 0 at shift 4n and j = 2 at 4n + 2, byte k + 2 the same for
  // j = 1, 3.
  let t = scales.z >> (8u * k + 4u * n);
  let highs = (t & 0x00030003u) | (((t >> 2u) & 0x00030003u) << 8u);
  let sc = ((lows >> (4u * n)) & 0x0f0f0f0fu) | (highs << 4u);
  return Raw(load8(base + 8u * (c % 4u)), load8(base + 32u + 8u * c), sc, d);
}
fn unit_x(xrow: u32, u: u32) -> array<vec4f, 8> {
  return x_runs8(xrow, u);
}
// Σ q · x of run j: low bits at shift 2j of q, high bit `hbit` of hm (clear: −4), x values x0 and x1.
fn run_dot(w: Raw, j: u32, hbit: u32, x0: vec4f, x1: vec4f) -> f32 {
  return dot(crumbs(w.q.x, 2u * j) + 4.0 * bit_of_bytes(w.hm.x, hbit) - 4.0, x0) +
    dot(crumbs(w.q.y, 2u * j) + 4.0 * bit_of_bytes(w.hm.y, hbit) - 4.0, x1);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  let h = 4u * ((u % 8u) / 4u);
  let qx = vec4f(run_dot(w, 0u, h, xs[0], xs[1]), run_dot(w, 2u, h + 2u, xs[4], xs[5]),
                 run_dot(w, 1u, h + 1u, xs[2], xs[3]), run_dot(w, 3u, h + 3u, xs[6], xs[7]));
  return w.d * dot(ubytes(w.sc) - 32.0, qx);
}

// ==== Q4_K ====
// W: array<vec4u>. 144-byte blocks = 9 vec4s: [d, dmin, scales 0..3 | scales 4..7 | scales 8..11], then qs.
// Unit c (0..7) of block b is the vec4 1 + c, qs bytes 16c .. 16c + 15: low nibbles are elements
// 256b + 64j + 16h + i, high nibbles those + 32 (j = c / 2, h = c % 2), scale/min pairs 2j and 2j + 1.
const UNIT_ELEMS = 32u;
struct Raw {
  head: vec4u,
  qs: vec4u,
}
fn unit_load(row_bytes: u32, row: u32, u: u32) -> Raw {
  let b = row * (row_bytes / 16u) + (u / 8u) * 9u;
  return Raw(W[b], W[b + 1u + u % 8u]);
}
fn unit_x(xrow: u32, u: u32) -> array<vec4f, 8> {
  let c = u % 8u;
  let a = xrow + (u / 8u) * 64u + (c / 2u) * 16u + (c % 2u) * 4u;
  return array<vec4f, 8>(x[a], x[a + 1u], x[a + 2u], x[a + 3u], x[a + 8u], x[a + 9u], x[a + 10u], x[a + 11u]);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  let q_lo = dot(nib_lo(w.qs.x), xs[0]) + dot(nib_lo(w.qs.y), xs[1]) + dot(nib_lo(w.qs.z), xs[2]) +
    dot(nib_lo(w.qs.w), xs[3]);
  let q_hi = dot(nib_hi(w.qs.x), xs[4]) + dot(nib_hi(w.qs.y), xs[5]) + dot(nib_hi(w.qs.z), xs[6]) +
    dot(nib_hi(w.qs.w), xs[7]);
  return k_unit_sum(w.head, u, q_lo, q_hi, xs);
}

// ==== Q5_K ====
// W: array<vec4u>. 176-byte blocks = 11 vec4s: the Q4_K head, qh[32] (2 vec4s), qs[128] (8 vec4s). Unit c
// (0..7) of block b is qs vec4 3 + c with the qh vec4 1 + c % 2; elements as Q4_K, plus 16 × bit 2j (low
// nibbles) or 2j + 1 (high nibbles) of the qh byte.
const UNIT_ELEMS = 32u;
struct Raw {
  head: vec4u,
  qh: vec4u,
  qs: vec4u,
}
fn unit_load(row_bytes: u32, row: u32, u: u32) -> Raw {
  let b = row * (row_bytes / 16u) + (u / 8u) * 11u;
  let c = u % 8u;
  return Raw(W[b], W[b + 1u + c % 2u], W[b + 3u + c]);
}
fn unit_x(xrow: u32, u: u32) -> array<vec4f, 8> {
  let c = u % 8u;
  let a = xrow + (u / 8u) * 64u + (c / 2u) * 16u + (c % 2u) * 4u;
  return array<vec4f, 8>(x[a], x[a + 1u], x[a + 2u], x[a + 3u], x[a + 8u], x[a + 9u], x[a + 10u], x[a + 11u]);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  let j = (u % 8u) / 2u;
  let bl = 2u * j;
  let bh = bl + 1u;
  let q_lo = dot(nib_lo(w.qs.x) + 16.0 * bit_of_bytes(w.qh.x, bl), xs[0]) +
    dot(nib_lo(w.qs.y) + 16.0 * bit_of_bytes(w.qh.y, bl), xs[1]) +
    dot(nib_lo(w.qs.z) + 16.0 * bit_of_bytes(w.qh.z, bl), xs[2]) +
    dot(nib_lo(w.qs.w) + 16.0 * bit_of_bytes(w.qh.w, bl), xs[3]);
  let q_hi = dot(nib_hi(w.qs.x) + 16.0 * bit_of_bytes(w.qh.x, bh), xs[4]) +
    dot(nib_hi(w.qs.y) + 16.0 * bit_of_bytes(w.qh.y, bh), xs[5]) +
    dot(nib_hi(w.qs.z) + 16.0 * bit_of_bytes(w.qh.z, bh), xs[6]) +
    dot(nib_hi(w.qs.w) + 16.0 * bit_of_bytes(w.qh.w, bh), xs[7]);
  return k_unit_sum(w.head, u, q_lo, q_hi, xs);
}

// ==== Q6_K ====
// W: array<u32>. 210-byte blocks: ql[128], qh[64], scales int8[16], d f16; blocks start 2-byte aligned.
// Unit c (0..7) of block b, with n = c / 4, p = (c / 2) % 2, l0 = 16 (c % 2): ql bytes 16c .. 16c + 15 and
// qh bytes 128 + 32n + l0 .. + 15. Low nibbles (with qh bits at shift 2p) are elements
// 256b + 128n + 32p + l0 + i with scale 8n + 2p + c % 2; high nibbles (qh shift 2p + 4) are those + 64 with
// scale + 4; x = d · scale · (q − 32).
const UNIT_ELEMS = 32u;
struct Raw {
  ql: vec4u,
  qh: vec4u,
  scale: vec2f,
}
// 16 bytes at the even byte offset `at` (five 4-byte loads, funnel-shifted when `at` is not 4-aligned).
fn load16(at: u32) -> vec4u {
  let w = at / 4u;
  let a = W[w];
  let b = W[w + 1u];
  let c = W[w + 2u];
  let d = W[w + 3u];
  let e = W[w + 4u];
  let shifted = vec4u((a >> 16u) | (b << 16u), (b >> 16u) | (c << 16u), (c >> 16u) | (d << 16u),
                      (d >> 16u) | (e << 16u));
  return select(vec4u(a, b, c, d), shifted, (at & 2u) != 0u);
}
// The signed byte at byte offset `at`.
fn int8_at(at: u32) -> f32 {
  return f32(extractBits(bitcast<i32>(W[at / 4u] >> (8u * (at % 4u))), 0u, 8u));
}
fn unit_load(row_bytes: u32, row: u32, u: u32) -> Raw {
  let base = row * row_bytes + (u / 8u) * 210u;
  let c = u % 8u;
  let n = c / 4u;
  let ql = load16(base + 16u * c);
  let qh = load16(base + 128u + 32u * n + 16u * (c % 2u));
  let s = base + 192u + 8u * n + 2u * ((c / 2u) % 2u) + c % 2u;
  let dat = base + 208u; // even: the half never straddles a word
  let d = unpack2x16float(W[dat / 4u] >> (8u * (dat % 4u))).x;
  return Raw(ql, qh, d * vec2f(int8_at(s), int8_at(s + 4u)));
}
fn unit_x(xrow: u32, u: u32) -> array<vec4f, 8> {
  let c = u % 8u;
  let a = xrow + (u / 8u) * 64u + (c / 4u) * 32u + ((c / 2u) % 2u) * 8u + (c % 2u) * 4u;
  return array<vec4f, 8>(x[a], x[a + 1u], x[a + 2u], x[a + 3u], x[a + 16u], x[a + 17u], x[a + 18u],
                         x[a + 19u]);
}
// The four 6-bit values (nibble at `nib` of ql's bytes, two bits at `crumb` of qh's bytes) minus 32.
fn q6(ql: u32, qh: u32, nib: u32, crumb: u32) -> vec4f {
  return ubytes(((ql >> nib) & 0x0f0f0f0fu) | (((qh >> crumb) & 0x03030303u) << 4u)) - 32.0;
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  let sl = 2u * ((u % 8u / 2u) % 2u);
  let sh = sl + 4u;
  let q_lo = dot(q6(w.ql.x, w.qh.x, 0u, sl), xs[0]) + dot(q6(w.ql.y, w.qh.y, 0u, sl), xs[1]) +
    dot(q6(w.ql.z, w.qh.z, 0u, sl), xs[2]) + dot(q6(w.ql.w, w.qh.w, 0u, sl), xs[3]);
  let q_hi = dot(q6(w.ql.x, w.qh.x, 4u, sh), xs[4]) + dot(q6(w.ql.y, w.qh.y, 4u, sh), xs[5]) +
    dot(q6(w.ql.z, w.qh.z, 4u, sh), xs[6]) + dot(q6(w.ql.w, w.qh.w, 4u, sh), xs[7]);
  return w.scale.x * q_lo + w.scale.y * q_hi;
}

// ==== Q8_0_INT8 ====
// Unit u is block u: 32 consecutive values, x blocks 2u and 2u + 1.
fn unit_dot_int8(w: Raw, u: u32, xb: u32) -> f32 {
  let lo = x_scales[xb + 2u * u];
  let hi = x_scales[xb + 2u * u + 1u];
  return w.d * (lo.x * dot16_int8(w.lo, x_blocks[xb + 2u * u]) + hi.x * dot16_int8(w.hi, x_blocks[xb + 2u * u + 1u]));
}

// ==== Q4_0_INT8 ====
// Unit u is block u: low nibbles are x block 2u, high nibbles block 2u + 1; Σ (q − 8) · x = d_x Σ q q_x − 8 d_x Σ q_x.
fn unit_dot_int8(w: Raw, u: u32, xb: u32) -> f32 {
  let lo = x_scales[xb + 2u * u];
  let hi = x_scales[xb + 2u * u + 1u];
  let q_lo = lo.x * dot16_int8(w.qs & vec4u(0x0f0f0f0fu), x_blocks[xb + 2u * u]) - 8.0 * lo.y;
  let q_hi = hi.x * dot16_int8((w.qs >> vec4u(4u)) & vec4u(0x0f0f0f0fu), x_blocks[xb + 2u * u + 1u]) - 8.0 * hi.y;
  return w.d * (q_lo + q_hi);
}

// ==== Q4_K_INT8 ====
// Unit c = u % 8 (j = c / 2, h = c % 2): low nibbles are the 16 values from 256 (u / 8) + 64j + 16h, x block
// 16 (u / 8) + 4j + h; high nibbles the 16 after them + 32, two blocks on (see k_unit_int8).
fn unit_dot_int8(w: Raw, u: u32, xb: u32) -> f32 {
  return k_unit_int8(w.head, u, xb, w.qs & vec4u(0x0f0f0f0fu), (w.qs >> vec4u(4u)) & vec4u(0x0f0f0f0fu));
}

// ==== Q5_K_INT8 ====
// As Q4_K_INT8, each quant with 16 × its qh bit (2j for the low nibbles, 2j + 1 for the high ones).
fn unit_dot_int8(w: Raw, u: u32, xb: u32) -> f32 {
  let j = (u % 8u) / 2u;
  let bits = vec4u(0x01010101u);
  let w_lo = (w.qs & vec4u(0x0f0f0f0fu)) | (((w.qh >> vec4u(2u * j)) & bits) << vec4u(4u));
  let w_hi = ((w.qs >> vec4u(4u)) & vec4u(0x0f0f0f0fu)) | (((w.qh >> vec4u(2u * j + 1u)) & bits) << vec4u(4u));
  return k_unit_int8(w.head, u, xb, w_lo, w_hi);
}

// ==== Q6_K_INT8 ====
// Unit c = u % 8 (n = c / 4, p = (c / 2) % 2): low nibbles are the 16 values from 256 (u / 8) + 128n + 32p +
// 16 (c % 2), x block 16 (u / 8) + 8n + 2p + c % 2; high nibbles those + 64, four blocks on. The 6-bit
// quants q are 0..63: Σ (q − 32) · x = d_x Σ q q_x − 32 d_x Σ q_x.
fn unit_dot_int8(w: Raw, u: u32, xb: u32) -> f32 {
  let c = u % 8u;
  let b = xb + (u / 8u) * 16u + (c / 4u) * 8u + ((c / 2u) % 2u) * 2u + c % 2u;
  let x_lo = x_scales[b];
  let x_hi = x_scales[b + 4u];
  let sl = 2u * ((c / 2u) % 2u);
  let crumbs = vec4u(0x03030303u);
  let w_lo = (w.ql & vec4u(0x0f0f0f0fu)) | (((w.qh >> vec4u(sl)) & crumbs) << vec4u(4u));
  let w_hi = ((w.ql >> vec4u(4u)) & vec4u(0x0f0f0f0fu)) | (((w.qh >> vec4u(sl + 4u)) & crumbs) << vec4u(4u));
  let q_lo = x_lo.x * dot16_int8(w_lo, x_blocks[b]) - 32.0 * x_lo.y;
  let q_hi = x_hi.x * dot16_int8(w_hi, x_blocks[b + 4u]) - 32.0 * x_hi.y;
  return w.scale.x * q_lo + w.scale.y * q_hi;
}

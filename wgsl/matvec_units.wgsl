// Sub-block decoding for the decode matrix-vector kernels of wgsl/matvec_fast.wgsl.
//
// This file is a library, not a kernel: src/gpu/ops/matvec_units.ts splices the COMMON section plus exactly
// one type section into a kernel (at UNITS_A / UNITS_B / UNITS_C), with every name declared here and the
// weight binding `W` suffixed per weight (`W_a`, `unit_load_a`, `Raw_a`, …).
//
// A row is cut into units of UNIT_ELEMS (32) elements, fixed pieces of the type's blocks. One thread takes
// a whole unit of a row at a time: it loads the unit's raw words once (16-byte `vec4u` loads where the
// type's blocks are 16-byte aligned, 4-byte loads with a 2-byte funnel shift where they are not), decodes
// the block scales once per unit, and takes the dot product with the unit's x values, which it loads once
// per token (as vec4f) and shares across all the rows of its workgroup.
//
// The including kernel declares
//   `W: array<vec4u>` or `W: array<u32>`  the raw rows of the weight (the word type each section names),
//   `x: array<vec4f>`                     activations [m][cols] (cols a multiple of 4),
//   `cols`, `wg_size`, `rows_per_wg`, `tokens_per_wg`   override constants (elements per row, threads,
//                                         rows and tokens per workgroup), and consts MAX_ROWS, MAX_TOKENS.
// Every type section defines
//   `UNIT_ELEMS`                                          elements per unit (cols is a multiple of it),
//   `struct Raw`                                          one unit of one row, loaded, scales decoded,
//   `fn unit_load(row_bytes, row, u) -> Raw`              unit u of row `row` (rows of row_bytes bytes),
//   `fn unit_x(xrow, u) -> array<vec4f, 8>`               the unit's 32 x values in the unit's order, from
//                                                         the token row of x starting at vec4 `xrow`,
//   `fn unit_dot(w, xs, u) -> f32`                        Σ weight · x over the unit.
// The COMMON section adds `accumulate`, the per-thread loop over a workgroup's rows and tokens.

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
// The sums Σ_c W[row][c] · x[t][c] of this thread's units for the rows row0 .. row0 + rows_per_wg − 1
// (clamped to last_row: rows past it repeat it and are not to be written) and the tokens t0 .. t0 + nt − 1,
// at acc[r · MAX_TOKENS + t]. Threads take units tid, tid + wg_size, …, units_per_step of them per step:
// the loads of every row of all those units are issued before any arithmetic on them.
fn accumulate(row_bytes: u32, row0: u32, last_row: u32, t0: u32, nt: u32, tid: u32)
    -> array<f32, MAX_ROWS * MAX_TOKENS> {
  var acc: array<f32, MAX_ROWS * MAX_TOKENS>;
  let x_row = cols / 4u;
  let units = cols / UNIT_ELEMS;
  for (var u0 = tid; u0 < units; u0 += wg_size * units_per_step) {
    var raw: array<Raw, MAX_ROWS * MAX_UNITS_PER_STEP>; // [step unit k][row r]
    // @unroll
    for (var k = 0u; k < units_per_step; k++) {
      let u = min(u0 + k * wg_size, units - 1u); // past the end: a repeat, not used below
      // @unroll
      for (var r = 0u; r < rows_per_wg; r++) {
        raw[k * MAX_ROWS + r] = unit_load(row_bytes, min(row0 + r, last_row), u);
      }
    }
    // @unroll
    for (var k = 0u; k < units_per_step; k++) {
      let u = u0 + k * wg_size;
      if (u < units) {
        // @unroll
        for (var t = 0u; t < tokens_per_wg; t++) {
          if (t < nt) {
            let xs = unit_x((t0 + t) * x_row, u);
            // @unroll
            for (var r = 0u; r < rows_per_wg; r++) {
              acc[r * MAX_TOKENS + t] += unit_dot(raw[k * MAX_ROWS + r], xs, u);
            }
          }
        }
      }
    }
  }
  return acc;
}

// ==== F32 ====
// W: array<vec4u>. Unit u holds the eight vec4s (u / 8) · 64 + 8i + u % 8 (i < 8) of its row, so the
// neighbouring threads of one load read neighbouring vec4s; needs cols % 256 == 0.
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

// ==== F16 ====
// W: array<vec4u> (8 halves per vec4). Unit u holds the four vec4s (u / 8) · 32 + 8i + u % 8 (i < 4) of its
// row; needs cols % 256 == 0.
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
  return dot(vec4f(unpack2x16float(v.x), unpack2x16float(v.y)), x0) +
    dot(vec4f(unpack2x16float(v.z), unpack2x16float(v.w)), x1);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  return halves_dot(w.v[0], xs[0], xs[1]) + halves_dot(w.v[1], xs[2], xs[3]) +
    halves_dot(w.v[2], xs[4], xs[5]) + halves_dot(w.v[3], xs[6], xs[7]);
}

// ==== BF16 ====
// As F16, with bfloat16 values.
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
// The two bfloat16 values of v.
fn bf16_pair(v: u32) -> vec2f {
  return vec2f(bitcast<f32>(v << 16u), bitcast<f32>(v & 0xffff0000u));
}
fn bf16_dot(v: vec4u, x0: vec4f, x1: vec4f) -> f32 {
  return dot(vec4f(bf16_pair(v.x), bf16_pair(v.y)), x0) + dot(vec4f(bf16_pair(v.z), bf16_pair(v.w)), x1);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  return bf16_dot(w.v[0], xs[0], xs[1]) + bf16_dot(w.v[1], xs[2], xs[3]) + bf16_dot(w.v[2], xs[4], xs[5]) +
    bf16_dot(w.v[3], xs[6], xs[7]);
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
  let a = xrow + 8u * u;
  return array<vec4f, 8>(x[a], x[a + 1u], x[a + 2u], x[a + 3u], x[a + 4u], x[a + 5u], x[a + 6u], x[a + 7u]);
}
fn unit_dot(w: Raw, xs: array<vec4f, 8>, u: u32) -> f32 {
  return w.d * (dot(ibytes(w.lo.x), xs[0]) + dot(ibytes(w.lo.y), xs[1]) + dot(ibytes(w.lo.z), xs[2]) +
    dot(ibytes(w.lo.w), xs[3]) + dot(ibytes(w.hi.x), xs[4]) + dot(ibytes(w.hi.y), xs[5]) +
    dot(ibytes(w.hi.z), xs[6]) + dot(ibytes(w.hi.w), xs[7]));
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

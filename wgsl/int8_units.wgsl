// 8-bit integer views of GGUF (ggml) weight blocks for the integer-dot-product prefill kernel
// (wgsl/matmul_int8.wgsl).
//
// This file is a library, not a kernel: src/gpu/ops/matmul_int8.ts splices the COMMON section of
// wgsl/dequant.wgsl (the byte readers rd32, rd8, rdf16 and scale_min_k4 over `W: array<u32>`), the COMMON
// section of this file and exactly one type section into the kernel, once per weight binding, with `W` and
// the function names suffixed per weight (`W_a`, `int8_unit_a`, …). A row is cut into sub-blocks of 32 elements. Every section
// defines `fn int8_unit(row: u32, sub: u32) -> Int8Unit`: sub-block `sub` of the row whose first byte is at
// byte offset `row` of W, as 32 signed 8-bit integers q (element 4k + i in byte i of word k) and a scale
// such that weight e = scale.x · q[e] − scale.z for e < 16 and scale.y · q[e] − scale.z for e ≥ 16 (Q6_K
// has a scale per 16 elements; the others repeat one). Types: Q8_0, Q4_0, Q4_K, Q5_K, Q6_K; a row is a
// whole number of blocks (src/gpu/ops/matmul_int8.ts checks).

// ==== COMMON ====
// (The kernel declares `struct Int8Unit { q: array<u32, 8>, scale: vec4f }`, scale = (scale of elements
// 0..15, scale of 16..31, offset subtracted from every element, 0), once for all the weights it reads.)
// Q4_K and Q5_K: the scale of sub-block s of the block at byte b: (d · sc, d · sc, dmin · m, 0).
fn k_unit_scale(b: u32, s: u32) -> vec4f {
  let sm = scale_min_k4(b + 4u, s);
  let d = rdf16(b) * sm.x;
  return vec4f(d, d, rdf16(b + 2u) * sm.y, 0.0);
}
// Low (shift 0) or high (shift 4) nibbles of the four bytes of v, as four bytes 0..15.
fn nibbles4(v: u32, shift: u32) -> u32 {
  return (v >> shift) & 0x0f0f0f0fu;
}

// ==== Q8_0 ====
// Block: f16 d, 32 × int8; weight = d · q.
fn int8_unit(row: u32, sub: u32) -> Int8Unit {
  let b = row + sub * 34u;
  var u: Int8Unit;
  // @unroll
  for (var k = 0u; k < 8u; k++) { u.q[k] = rd32(b + 2u + 4u * k); }
  let d = rdf16(b);
  u.scale = vec4f(d, d, 0.0, 0.0);
  return u;
}

// ==== Q4_0 ====
// Block: f16 d, 16 bytes: element l < 16 is the low nibble of byte l, element l + 16 its high nibble;
// weight = d · (q − 8) = d · q − 8d.
fn int8_unit(row: u32, sub: u32) -> Int8Unit {
  let b = row + sub * 18u;
  var u: Int8Unit;
  // @unroll
  for (var k = 0u; k < 4u; k++) {
    let v = rd32(b + 2u + 4u * k);
    u.q[k] = nibbles4(v, 0u);
    u.q[k + 4u] = nibbles4(v, 4u);
  }
  let d = rdf16(b);
  u.scale = vec4f(d, d, 8.0 * d, 0.0);
  return u;
}

// ==== Q4_K ====
// Block of 256: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles; sub-blocks 2j and
// 2j + 1 are the low and high nibbles of bytes 32j .. 32j + 31; weight = d · sc · q − dmin · m.
fn int8_unit(row: u32, sub: u32) -> Int8Unit {
  let b = row + (sub / 8u) * 144u;
  let s = sub % 8u;
  let qs = b + 16u + 32u * (s / 2u);
  let shift = 4u * (s % 2u);
  var u: Int8Unit;
  // @unroll
  for (var k = 0u; k < 8u; k++) { u.q[k] = nibbles4(rd32(qs + 4u * k), shift); }
  u.scale = k_unit_scale(b, s);
  return u;
}

// ==== Q5_K ====
// Block of 256: f16 d, f16 dmin, 12 scale bytes, 32 bytes qh, 128 bytes of nibbles (as Q4_K); element l of
// sub-block s adds 16 · bit s of qh[l]; weight = d · sc · q − dmin · m.
fn int8_unit(row: u32, sub: u32) -> Int8Unit {
  let b = row + (sub / 8u) * 176u;
  let s = sub % 8u;
  let qs = b + 48u + 32u * (s / 2u);
  let shift = 4u * (s % 2u);
  var u: Int8Unit;
  // @unroll
  for (var k = 0u; k < 8u; k++) {
    u.q[k] = nibbles4(rd32(qs + 4u * k), shift) | (((rd32(b + 16u + 4u * k) >> s) & 0x01010101u) << 4u);
  }
  u.scale = k_unit_scale(b, s);
  return u;
}

// ==== Q6_K ====
// Block of 256: ql[128], qh[64], int8 scales[16], f16 d. Half n (128 elements) has quarters j = 0..3 of 32:
// low 4 bits from the low (j < 2) or high (j ≥ 2) nibbles of ql[64n + 32 (j % 2) + l], high 2 bits from
// bits 2j of qh[32n + l]; weight = d · scales[8n + 2j + l / 16] · (q − 32).
fn int8_unit(row: u32, sub: u32) -> Int8Unit {
  let b = row + (sub / 8u) * 210u;
  let s = sub % 8u;
  let n = s / 4u;
  let j = s % 4u;
  let ql = b + 64u * n + 32u * (j % 2u);
  let qh = b + 128u + 32u * n;
  var u: Int8Unit;
  // @unroll
  for (var k = 0u; k < 8u; k++) {
    let q = nibbles4(rd32(ql + 4u * k), 4u * (j / 2u)) | (((rd32(qh + 4u * k) >> (2u * j)) & 0x03030303u) << 4u);
    // q − 32 in every byte without a borrow between bytes: with each byte's top bit set first, then flipped.
    u.q[k] = ((q | 0x80808080u) - 0x20202020u) ^ 0x80808080u;
  }
  let d = rdf16(b + 208u);
  let sc = b + 192u + 8u * n + 2u * j;
  let lo = f32(extractBits(bitcast<i32>(rd8(sc)), 0u, 8u));
  let hi = f32(extractBits(bitcast<i32>(rd8(sc + 1u)), 0u, 8u));
  u.scale = vec4f(d * lo, d * hi, 0.0, 0.0);
  return u;
}

// Dequantisation of GGUF (ggml) tensor types, read straight from raw blocks in `W: array<u32>`.
//
// This file is a library, not a kernel: the TypeScript side (src/gpu/weights.ts, `dequantSource`) splices
// the COMMON section plus exactly one type section into a kernel through the `{{DEQUANT}}` text define.
// The including kernel must declare
//   `W: array<u32>`      the raw bytes of the weight rows (binding of the including kernel), and
//   `cols: u32`          the number of elements per row (a module-scope variable or constant; it masks
//                        the tail of unquantised rows).
// Every type section defines
//   `BLOCK_ELEMS`, `BLOCK_BYTES` the ggml block geometry, and
//   `fn dq4(row: u32, e: u32) -> vec4f`: elements e..e+3 of the row whose first byte is at byte offset
//   `row` of W (e is a multiple of 4; elements at or past `cols` read as 0), and
//   `fn dq16(row: u32, e: u32) -> array<vec4f, 4>`: elements e..e+15 (e a multiple of 16, e + 16 ≤ cols),
//   decoding the block's scales once: the decode hot path.
// Blocks are ggml's (QK_K = 256). Block and row starts need not be 4-byte aligned (Q4_0 blocks are 18
// bytes, Q6_K 210), so reads go through the byte helpers of the COMMON section.

// ==== COMMON ====
// Four bytes starting at any byte offset, little-endian.
fn rd32(byte: u32) -> u32 {
  let w = byte >> 2u;
  let s = (byte & 3u) * 8u;
  if (s == 0u) { return W[w]; }
  return (W[w] >> s) | (W[w + 1u] << (32u - s));
}
// Two bytes starting at any byte offset.
fn rd16(byte: u32) -> u32 {
  let w = byte >> 2u;
  let s = (byte & 3u) * 8u;
  if (s <= 16u) { return (W[w] >> s) & 0xffffu; }
  return (W[w] >> 24u) | ((W[w + 1u] & 0xffu) << 8u);
}
fn rd8(byte: u32) -> u32 {
  return (W[byte >> 2u] >> ((byte & 3u) * 8u)) & 0xffu;
}
fn rdf16(byte: u32) -> f32 {
  return unpack2x16float(rd16(byte)).x;
}
// The four bytes of v as unsigned values.
fn bytes4(v: u32) -> vec4f {
  return vec4f(f32(v & 0xffu), f32((v >> 8u) & 0xffu), f32((v >> 16u) & 0xffu), f32(v >> 24u));
}
// The four bytes of v as signed (int8) values.
fn sbytes4(v: u32) -> vec4f {
  let i = bitcast<i32>(v);
  return vec4f(f32(extractBits(i, 0u, 8u)), f32(extractBits(i, 8u, 8u)), f32(extractBits(i, 16u, 8u)),
               f32(extractBits(i, 24u, 8u)));
}
// The 2-bit fields at bit `shift` of each byte of v, as a vec4 of 0..3.
fn crumbs4(v: u32, shift: u32) -> vec4f {
  return bytes4((v >> shift) & 0x03030303u);
}
// One bit (bit `bit` of each byte of v), as a vec4 of 0 or 1.
fn bits4(v: u32, bit: u32) -> vec4f {
  return bytes4((v >> bit) & 0x01010101u);
}
// 6-bit scale and min number j (0..7) of the 12 packed scale bytes at `sc` (Q4_K, Q5_K).
fn scale_min_k4(sc: u32, j: u32) -> vec2f {
  if (j < 4u) {
    return vec2f(f32(rd8(sc + j) & 63u), f32(rd8(sc + j + 4u) & 63u));
  }
  let hi = rd8(sc + j + 4u);
  let scale = (hi & 15u) | ((rd8(sc + j - 4u) >> 6u) << 4u);
  let min = (hi >> 4u) | ((rd8(sc + j) >> 6u) << 4u);
  return vec2f(f32(scale), f32(min));
}

// ==== F32 ====
const BLOCK_ELEMS = 1u;
const BLOCK_BYTES = 4u;
fn dq4(row: u32, e: u32) -> vec4f {
  let w = (row >> 2u) + e;
  if (e + 4u <= cols) {
    return bitcast<vec4f>(vec4u(W[w], W[w + 1u], W[w + 2u], W[w + 3u]));
  }
  var v = vec4f(0.0);
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    if (e + i < cols) { v[i] = bitcast<f32>(W[w + i]); }
  }
  return v;
}
// Sixteen elements e..e+15 (e a multiple of 16, e + 16 ≤ cols); the decode hot path.
fn dq16(row: u32, e: u32) -> array<vec4f, 4> {
  let w = (row >> 2u) + e;
  var v: array<vec4f, 4>;
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    let a = w + 4u * i;
    v[i] = bitcast<vec4f>(vec4u(W[a], W[a + 1u], W[a + 2u], W[a + 3u]));
  }
  return v;
}

// ==== F16 ====
const BLOCK_ELEMS = 1u;
const BLOCK_BYTES = 2u;
fn dq4(row: u32, e: u32) -> vec4f {
  let b = row + 2u * e;
  if (e + 4u <= cols) { return vec4f(unpack2x16float(rd32(b)), unpack2x16float(rd32(b + 4u))); }
  var v = vec4f(0.0);
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    if (e + i < cols) { v[i] = rdf16(b + 2u * i); }
  }
  return v;
}
fn dq16(row: u32, e: u32) -> array<vec4f, 4> {
  let b = row + 2u * e;
  var v: array<vec4f, 4>;
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    v[i] = vec4f(unpack2x16float(rd32(b + 8u * i)), unpack2x16float(rd32(b + 8u * i + 4u)));
  }
  return v;
}

// ==== BF16 ====
const BLOCK_ELEMS = 1u;
const BLOCK_BYTES = 2u;
fn dq4(row: u32, e: u32) -> vec4f {
  let b = row + 2u * e;
  if (e + 4u <= cols) {
    let lo = rd32(b);
    let hi = rd32(b + 4u);
    return vec4f(bitcast<f32>(lo << 16u), bitcast<f32>(lo & 0xffff0000u), bitcast<f32>(hi << 16u),
                 bitcast<f32>(hi & 0xffff0000u));
  }
  var v = vec4f(0.0);
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    if (e + i < cols) { v[i] = bitcast<f32>(rd16(b + 2u * i) << 16u); }
  }
  return v;
}
fn dq16(row: u32, e: u32) -> array<vec4f, 4> {
  let b = row + 2u * e;
  var v: array<vec4f, 4>;
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    let lo = rd32(b + 8u * i);
    let hi = rd32(b + 8u * i + 4u);
    v[i] = vec4f(bitcast<f32>(lo << 16u), bitcast<f32>(lo & 0xffff0000u), bitcast<f32>(hi << 16u),
                 bitcast<f32>(hi & 0xffff0000u));
  }
  return v;
}

// ==== Q8_0 ====
// 34 bytes: d f16, qs int8[32]; x = d·q.
const BLOCK_ELEMS = 32u;
const BLOCK_BYTES = 34u;
fn dq4(row: u32, e: u32) -> vec4f {
  let base = row + (e >> 5u) * BLOCK_BYTES;
  return rdf16(base) * sbytes4(rd32(base + 2u + (e & 31u)));
}
fn dq16(row: u32, e: u32) -> array<vec4f, 4> {
  let base = row + (e >> 5u) * BLOCK_BYTES;
  let q = base + 2u + (e & 31u);
  let d = rdf16(base);
  var v: array<vec4f, 4>;
  // @unroll
  for (var i = 0u; i < 4u; i++) { v[i] = d * sbytes4(rd32(q + 4u * i)); }
  return v;
}

// ==== Q4_0 ====
// 18 bytes: d f16, qs[16]; element l < 16 is the low nibble of qs[l], element l + 16 the high one;
// x = d·(q − 8).
const BLOCK_ELEMS = 32u;
const BLOCK_BYTES = 18u;
fn dq4(row: u32, e: u32) -> vec4f {
  let base = row + (e >> 5u) * BLOCK_BYTES;
  let l = e & 31u;
  let q = (rd32(base + 2u + (l & 15u)) >> ((l >> 4u) * 4u)) & 0x0f0f0f0fu;
  return rdf16(base) * (bytes4(q) - 8.0);
}
fn dq16(row: u32, e: u32) -> array<vec4f, 4> {
  let base = row + (e >> 5u) * BLOCK_BYTES;
  let shift = ((e & 31u) >> 4u) * 4u;
  let d = rdf16(base);
  var v: array<vec4f, 4>;
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    v[i] = d * (bytes4((rd32(base + 2u + 4u * i) >> shift) & 0x0f0f0f0fu) - 8.0);
  }
  return v;
}

// ==== Q4_1 ====
// 20 bytes: d f16, m f16, qs[16] (nibbles as Q4_0); x = d·q + m.
const BLOCK_ELEMS = 32u;
const BLOCK_BYTES = 20u;
fn dq4(row: u32, e: u32) -> vec4f {
  let base = row + (e >> 5u) * BLOCK_BYTES;
  let l = e & 31u;
  let q = (rd32(base + 4u + (l & 15u)) >> ((l >> 4u) * 4u)) & 0x0f0f0f0fu;
  let dm = unpack2x16float(rd32(base));
  return dm.x * bytes4(q) + dm.y;
}
fn dq16(row: u32, e: u32) -> array<vec4f, 4> {
  let base = row + (e >> 5u) * BLOCK_BYTES;
  let shift = ((e & 31u) >> 4u) * 4u;
  let dm = unpack2x16float(rd32(base));
  var v: array<vec4f, 4>;
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    v[i] = dm.x * bytes4((rd32(base + 4u + 4u * i) >> shift) & 0x0f0f0f0fu) + dm.y;
  }
  return v;
}

// ==== Q5_0 ====
// 22 bytes: d f16, qh u32 (bit l = fifth bit of element l), qs[16] (nibbles as Q4_0); x = d·(q − 16).
const BLOCK_ELEMS = 32u;
const BLOCK_BYTES = 22u;
fn dq4(row: u32, e: u32) -> vec4f {
  let base = row + (e >> 5u) * BLOCK_BYTES;
  let l = e & 31u;
  let lo = (rd32(base + 6u + (l & 15u)) >> ((l >> 4u) * 4u)) & 0x0f0f0f0fu;
  let h = (rd32(base + 2u) >> l) & 15u;
  let hi = ((h & 1u) | ((h & 2u) << 7u) | ((h & 4u) << 14u) | ((h & 8u) << 21u)) << 4u;
  return rdf16(base) * (bytes4(lo | hi) - 16.0);
}
fn dq16(row: u32, e: u32) -> array<vec4f, 4> {
  let base = row + (e >> 5u) * BLOCK_BYTES;
  let l = e & 31u;
  let shift = (l >> 4u) * 4u;
  let d = rdf16(base);
  let qh = rd32(base + 2u) >> l;
  var v: array<vec4f, 4>;
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    let lo = (rd32(base + 6u + 4u * i) >> shift) & 0x0f0f0f0fu;
    let h = (qh >> (4u * i)) & 15u;
    let hi = ((h & 1u) | ((h & 2u) << 7u) | ((h & 4u) << 14u) | ((h & 8u) << 21u)) << 4u;
    v[i] = d * (bytes4(lo | hi) - 16.0);
  }
  return v;
}

// ==== Q5_1 ====
// 24 bytes: d f16, m f16, qh u32, qs[16] (as Q5_0); x = d·q + m.
const BLOCK_ELEMS = 32u;
const BLOCK_BYTES = 24u;
fn dq4(row: u32, e: u32) -> vec4f {
  let base = row + (e >> 5u) * BLOCK_BYTES;
  let l = e & 31u;
  let lo = (rd32(base + 8u + (l & 15u)) >> ((l >> 4u) * 4u)) & 0x0f0f0f0fu;
  let h = (rd32(base + 4u) >> l) & 15u;
  let hi = ((h & 1u) | ((h & 2u) << 7u) | ((h & 4u) << 14u) | ((h & 8u) << 21u)) << 4u;
  let dm = unpack2x16float(rd32(base));
  return dm.x * bytes4(lo | hi) + dm.y;
}
fn dq16(row: u32, e: u32) -> array<vec4f, 4> {
  let base = row + (e >> 5u) * BLOCK_BYTES;
  let l = e & 31u;
  let shift = (l >> 4u) * 4u;
  let dm = unpack2x16float(rd32(base));
  let qh = rd32(base + 4u) >> l;
  var v: array<vec4f, 4>;
  // @unroll
  for (var i = 0u; i < 4u; i++) {
    let lo = (rd32(base + 8u + 4u * i) >> shift) & 0x0f0f0f0fu;
    let h = (qh >> (4u * i)) & 15u;
    let hi = ((h & 1u) | ((h & 2u) << 7u) | ((h & 4u) << 14u) | ((h & 8u) << 21u)) << 4u;
    v[i] = dm.x * bytes4(lo | hi) + dm.y;
  }
  return v;
}

// ==== Q2_K ====
// 84 bytes: scales[16] (low nibble scale, high nibble min), qs[64], d f16, dmin f16.
// Element 128n + 32j + 16k + l: 2 bits at shift 2j of qs[32n + 16k + l], scale byte 8n + 2j + k.
const BLOCK_ELEMS = 256u;
const BLOCK_BYTES = 84u;
fn dq4(row: u32, e: u32) -> vec4f {
  let base = row + (e >> 8u) * BLOCK_BYTES;
  let i = e & 255u;
  let n = i >> 7u;
  let j = (i >> 5u) & 3u;
  let k = (i >> 4u) & 1u;
  let l = i & 15u;
  let sc = rd8(base + 8u * n + 2u * j + k);
  let dm = unpack2x16float(rd32(base + 80u));
  let q = crumbs4(rd32(base + 16u + 32u * n + 16u * k + l), 2u * j);
  return dm.x * f32(sc & 15u) * q - dm.y * f32(sc >> 4u);
}
fn dq16(row: u32, e: u32) -> array<vec4f, 4> {
  let base = row + (e >> 8u) * BLOCK_BYTES;
  let i = e & 255u;
  let n = i >> 7u;
  let j = (i >> 5u) & 3u;
  let k = (i >> 4u) & 1u;
  let sc = rd8(base + 8u * n + 2u * j + k);
  let dm = unpack2x16float(rd32(base + 80u));
  let scale = dm.x * f32(sc & 15u);
  let min = dm.y * f32(sc >> 4u);
  let q = base + 16u + 32u * n + 16u * k;
  var v: array<vec4f, 4>;
  // @unroll
  for (var c = 0u; c < 4u; c++) { v[c] = scale * crumbs4(rd32(q + 4u * c), 2u * j) - min; }
  return v;
}

// ==== Q3_K ====
// 110 bytes: hmask[32], qs[64], scales[12] (16 packed 6-bit scales), d f16.
// Element 128n + 32j + 16k + l: low 2 bits at shift 2j of qs[32n + 16k + l], high bit = bit (4n + j) of
// hmask[16k + l] (clear means −4), scale number 8n + 2j + k; x = d·(scale − 32)·q.
const BLOCK_ELEMS = 256u;
const BLOCK_BYTES = 110u;
fn dq4(row: u32, e: u32) -> vec4f {
  let base = row + (e >> 8u) * BLOCK_BYTES;
  let i = e & 255u;
  let n = i >> 7u;
  let j = (i >> 5u) & 3u;
  let k = (i >> 4u) & 1u;
  let l = i & 15u;
  let s = 8u * n + 2u * j + k;
  let low = (rd8(base + 96u + (s & 7u)) >> ((s >> 3u) * 4u)) & 15u;
  let high = (rd8(base + 104u + (s & 3u)) >> (2u * (s >> 2u))) & 3u;
  let scale = f32(i32(low | (high << 4u)) - 32);
  let q = crumbs4(rd32(base + 32u + 32u * n + 16u * k + l), 2u * j);
  let h = bits4(rd32(base + 16u * k + l), 4u * n + j);
  return rdf16(base + 108u) * scale * (q + 4.0 * h - 4.0);
}
fn dq16(row: u32, e: u32) -> array<vec4f, 4> {
  let base = row + (e >> 8u) * BLOCK_BYTES;
  let i = e & 255u;
  let n = i >> 7u;
  let j = (i >> 5u) & 3u;
  let k = (i >> 4u) & 1u;
  let s = 8u * n + 2u * j + k;
  let low = (rd8(base + 96u + (s & 7u)) >> ((s >> 3u) * 4u)) & 15u;
  let high = (rd8(base + 104u + (s & 3u)) >> (2u * (s >> 2u))) & 3u;
  let scale = rdf16(base + 108u) * f32(i32(low | (high << 4u)) - 32);
  let q = base + 32u + 32u * n + 16u * k;
  let hm = base + 16u * k;
  var v: array<vec4f, 4>;
  // @unroll
  for (var c = 0u; c < 4u; c++) {
    v[c] = scale * (crumbs4(rd32(q + 4u * c), 2u * j) + 4.0 * bits4(rd32(hm + 4u * c), 4u * n + j) - 4.0);
  }
  return v;
}

// ==== Q4_K ====
// 144 bytes: d f16, dmin f16, scales[12] (8 packed 6-bit scale/min pairs), qs[128].
// Element 64j + 32h + l: nibble h of qs[32j + l], scale/min pair 2j + h; x = d·sc·q − dmin·m.
const BLOCK_ELEMS = 256u;
const BLOCK_BYTES = 144u;
fn dq4(row: u32, e: u32) -> vec4f {
  let base = row + (e >> 8u) * BLOCK_BYTES;
  let i = e & 255u;
  let j = i >> 6u;
  let h = (i >> 5u) & 1u;
  let l = i & 31u;
  let dm = unpack2x16float(rd32(base));
  let sm = scale_min_k4(base + 4u, 2u * j + h);
  let q = (rd32(base + 16u + 32u * j + l) >> (4u * h)) & 0x0f0f0f0fu;
  return dm.x * sm.x * bytes4(q) - dm.y * sm.y;
}
fn dq16(row: u32, e: u32) -> array<vec4f, 4> {
  let base = row + (e >> 8u) * BLOCK_BYTES;
  let i = e & 255u;
  let j = i >> 6u;
  let h = (i >> 5u) & 1u;
  let dm = unpack2x16float(rd32(base));
  let sm = scale_min_k4(base + 4u, 2u * j + h);
  let scale = dm.x * sm.x;
  let min = dm.y * sm.y;
  let q = base + 16u + 32u * j + (i & 31u);
  var v: array<vec4f, 4>;
  // @unroll
  for (var c = 0u; c < 4u; c++) { v[c] = scale * bytes4((rd32(q + 4u * c) >> (4u * h)) & 0x0f0f0f0fu) - min; }
  return v;
}

// ==== Q5_K ====
// 176 bytes: d f16, dmin f16, scales[12] (as Q4_K), qh[32], qs[128].
// Element 64j + 32h + l: nibble h of qs[32j + l] plus 16 × bit (2j + h) of qh[l]; x = d·sc·q − dmin·m.
const BLOCK_ELEMS = 256u;
const BLOCK_BYTES = 176u;
fn dq4(row: u32, e: u32) -> vec4f {
  let base = row + (e >> 8u) * BLOCK_BYTES;
  let i = e & 255u;
  let j = i >> 6u;
  let h = (i >> 5u) & 1u;
  let l = i & 31u;
  let dm = unpack2x16float(rd32(base));
  let sm = scale_min_k4(base + 4u, 2u * j + h);
  let lo = (rd32(base + 48u + 32u * j + l) >> (4u * h)) & 0x0f0f0f0fu;
  let hi = bits4(rd32(base + 16u + l), 2u * j + h);
  return dm.x * sm.x * (bytes4(lo) + 16.0 * hi) - dm.y * sm.y;
}
fn dq16(row: u32, e: u32) -> array<vec4f, 4> {
  let base = row + (e >> 8u) * BLOCK_BYTES;
  let i = e & 255u;
  let j = i >> 6u;
  let h = (i >> 5u) & 1u;
  let l = i & 31u;
  let dm = unpack2x16float(rd32(base));
  let sm = scale_min_k4(base + 4u, 2u * j + h);
  let scale = dm.x * sm.x;
  let min = dm.y * sm.y;
  var v: array<vec4f, 4>;
  // @unroll
  for (var c = 0u; c < 4u; c++) {
    let lo = (rd32(base + 48u + 32u * j + l + 4u * c) >> (4u * h)) & 0x0f0f0f0fu;
    let hi = bits4(rd32(base + 16u + l + 4u * c), 2u * j + h);
    v[c] = scale * (bytes4(lo) + 16.0 * hi) - min;
  }
  return v;
}

// ==== Q6_K ====
// 210 bytes: ql[128], qh[64], scales int8[16], d f16.
// Element 128n + 32p + l: low nibble (p < 2) or high nibble (p ≥ 2) of ql[64n + 32(p & 1) + l], 2 bits at
// shift 2p of qh[32n + l], scale 8n + 2p + l/16; x = d·scale·(q − 32).
const BLOCK_ELEMS = 256u;
const BLOCK_BYTES = 210u;
fn dq4(row: u32, e: u32) -> vec4f {
  let base = row + (e >> 8u) * BLOCK_BYTES;
  let i = e & 255u;
  let n = i >> 7u;
  let p = (i >> 5u) & 3u;
  let l = i & 31u;
  let lo = (rd32(base + 64u * n + 32u * (p & 1u) + l) >> (4u * (p >> 1u))) & 0x0f0f0f0fu;
  let hi = ((rd32(base + 128u + 32u * n + l) >> (2u * p)) & 0x03030303u) << 4u;
  let scale = f32(extractBits(i32(rd8(base + 192u + 8u * n + 2u * p + (l >> 4u))), 0u, 8u));
  return rdf16(base + 208u) * scale * (bytes4(lo | hi) - 32.0);
}
fn dq16(row: u32, e: u32) -> array<vec4f, 4> {
  let base = row + (e >> 8u) * BLOCK_BYTES;
  let i = e & 255u;
  let n = i >> 7u;
  let p = (i >> 5u) & 3u;
  let l = i & 31u;
  let sc = extractBits(i32(rd8(base + 192u + 8u * n + 2u * p + (l >> 4u))), 0u, 8u);
  let scale = rdf16(base + 208u) * f32(sc);
  let ql = base + 64u * n + 32u * (p & 1u) + l;
  let qh = base + 128u + 32u * n + l;
  var v: array<vec4f, 4>;
  // @unroll
  for (var c = 0u; c < 4u; c++) {
    let lo = (rd32(ql + 4u * c) >> (4u * (p >> 1u))) & 0x0f0f0f0fu;
    let hi = ((rd32(qh + 4u * c) >> (2u * p)) & 0x03030303u) << 4u;
    v[c] = scale * (bytes4(lo | hi) - 32.0);
  }
  return v;
}


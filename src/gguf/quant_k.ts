/**
 * Dequantisers for ggml's 256-element "K" super-block formats (Q2_K … Q6_K), with the float32 arithmetic
 * of ggml's reference C code (`ggml-quants.c`): each product and difference rounds to float32, no fused
 * multiply-add.
 *
 * Super-block layouts (little-endian, `half` = binary16):
 * - Q2_K (84 B):  u8 scales[16] (low nibble scale, high nibble min, per 16 elements); u8 qs[64] (2-bit);
 *                 half d; half dmin.
 * - Q3_K (110 B): u8 hmask[32] (third bit, cleared = subtract 4); u8 qs[64] (low 2 bits);
 *                 u8 scales[12] (16 six-bit scales, offset by 32); half d.
 * - Q4_K (144 B): half d; half dmin; u8 scales[12] (8 six-bit scale/min pairs); u8 qs[128] (4-bit).
 * - Q5_K (176 B): half d; half dmin; u8 scales[12]; u8 qh[32] (fifth bit); u8 qs[128] (low 4 bits).
 * - Q6_K (210 B): u8 ql[128] (low 4 bits); u8 qh[64] (high 2 bits); i8 scales[16]; half d.
 *
 * @module
 */

import { HALF_TO_F32 } from "./half.ts";

const f = Math.fround;

/** Elements per super-block of every K format. */
export const QK_K = 256;

function half(src: Uint8Array, at: number): number {
  return HALF_TO_F32[src[at] | (src[at + 1] << 8)];
}

/**
 * Unpacks the six-bit (scale, min) pair `j` (0..7) of a Q4_K/Q5_K `scales[12]` field starting at `at`:
 * pairs 0..3 sit in the low six bits of bytes 0..3 (scales) and 4..7 (mins); pairs 4..7 keep their low
 * four bits in the nibbles of bytes 8..11 and their top two bits in the spare bits of bytes 0..7.
 */
export function scaleMinK4(src: Uint8Array, at: number, j: number): [scale: number, min: number] {
  if (j < 4) return [src[at + j] & 63, src[at + j + 4] & 63];
  return [
    (src[at + j + 4] & 0xf) | ((src[at + j - 4] >> 6) << 4),
    (src[at + j + 4] >> 4) | ((src[at + j] >> 6) << 4),
  ];
}

/**
 * Unpacks the six-bit scale `i` (0..15, without the -32 offset) of a Q3_K `scales[12]` field starting at
 * `at`: low four bits in the nibbles of bytes 0..7, top two bits in bytes 8..11.
 */
export function scaleQ3K(src: Uint8Array, at: number, i: number): number {
  const low = i < 8 ? src[at + i] & 0xf : src[at + i - 8] >> 4;
  const high = (src[at + 8 + (i & 3)] >> (2 * (i >> 2))) & 3;
  return low | (high << 4);
}

/** Dequantises Q2_K super-blocks (84 bytes per 256 elements) from `src` into all of `dst`. */
export function dequantizeQ2_K(src: Uint8Array, dst: Float32Array): void {
  for (let b = 0, o = 0; o < dst.length; b += 84, o += 256) {
    const d = half(src, b + 80);
    const dmin = half(src, b + 82);
    let y = o;
    let scaleIndex = 0;
    for (let half128 = 0; half128 < 2; half128++) {
      const q = b + 16 + 32 * half128;
      for (let shift = 0; shift < 8; shift += 2) {
        for (let part = 0; part < 2; part++) {
          const sc = src[b + scaleIndex++];
          const dl = f(d * (sc & 0xf));
          const ml = f(dmin * (sc >> 4));
          for (let l = 0; l < 16; l++) dst[y++] = f(dl * ((src[q + 16 * part + l] >> shift) & 3)) - ml;
        }
      }
    }
  }
}

/** Dequantises Q3_K super-blocks (110 bytes per 256 elements) from `src` into all of `dst`. */
export function dequantizeQ3_K(src: Uint8Array, dst: Float32Array): void {
  for (let b = 0, o = 0; o < dst.length; b += 110, o += 256) {
    const d = half(src, b + 108);
    let y = o;
    let scaleIndex = 0;
    let mask = 1;
    for (let half128 = 0; half128 < 2; half128++) {
      const q = b + 32 + 32 * half128;
      for (let shift = 0; shift < 8; shift += 2) {
        for (let part = 0; part < 2; part++) {
          const dl = f(d * (scaleQ3K(src, b + 96, scaleIndex++) - 32));
          for (let l = 16 * part; l < 16 * part + 16; l++) {
            const low = (src[q + l] >> shift) & 3;
            dst[y++] = dl * (low - (src[b + l] & mask ? 0 : 4));
          }
        }
        mask <<= 1;
      }
    }
  }
}

/** Dequantises Q4_K super-blocks (144 bytes per 256 elements) from `src` into all of `dst`. */
export function dequantizeQ4_K(src: Uint8Array, dst: Float32Array): void {
  for (let b = 0, o = 0; o < dst.length; b += 144, o += 256) {
    const d = half(src, b);
    const dmin = half(src, b + 2);
    let y = o;
    for (let chunk = 0; chunk < 4; chunk++) {
      const q = b + 16 + 32 * chunk;
      const [sc1, m1] = scaleMinK4(src, b + 4, 2 * chunk);
      const [sc2, m2] = scaleMinK4(src, b + 4, 2 * chunk + 1);
      const d1 = f(d * sc1), min1 = f(dmin * m1);
      const d2 = f(d * sc2), min2 = f(dmin * m2);
      for (let l = 0; l < 32; l++) dst[y++] = f(d1 * (src[q + l] & 0xf)) - min1;
      for (let l = 0; l < 32; l++) dst[y++] = f(d2 * (src[q + l] >> 4)) - min2;
    }
  }
}

/** Dequantises Q5_K super-blocks (176 bytes per 256 elements) from `src` into all of `dst`. */
export function dequantizeQ5_K(src: Uint8Array, dst: Float32Array): void {
  for (let b = 0, o = 0; o < dst.length; b += 176, o += 256) {
    const d = half(src, b);
    const dmin = half(src, b + 2);
    const qh = b + 16;
    let y = o;
    for (let chunk = 0; chunk < 4; chunk++) {
      const ql = b + 48 + 32 * chunk;
      const bit1 = 1 << (2 * chunk), bit2 = 2 << (2 * chunk);
      const [sc1, m1] = scaleMinK4(src, b + 4, 2 * chunk);
      const [sc2, m2] = scaleMinK4(src, b + 4, 2 * chunk + 1);
      const d1 = f(d * sc1), min1 = f(dmin * m1);
      const d2 = f(d * sc2), min2 = f(dmin * m2);
      for (let l = 0; l < 32; l++) {
        dst[y++] = f(d1 * ((src[ql + l] & 0xf) + (src[qh + l] & bit1 ? 16 : 0))) - min1;
      }
      for (let l = 0; l < 32; l++) {
        dst[y++] = f(d2 * ((src[ql + l] >> 4) + (src[qh + l] & bit2 ? 16 : 0))) - min2;
      }
    }
  }
}

/** Dequantises Q6_K super-blocks (210 bytes per 256 elements) from `src` into all of `dst`. */
export function dequantizeQ6_K(src: Uint8Array, dst: Float32Array): void {
  for (let b = 0, o = 0; o < dst.length; b += 210, o += 256) {
    const d = half(src, b + 208);
    for (let half128 = 0; half128 < 2; half128++) {
      const ql = b + 64 * half128;
      const qh = b + 128 + 32 * half128;
      const sc = b + 192 + 8 * half128;
      const y = o + 128 * half128;
      for (let l = 0; l < 32; l++) {
        const is = l >> 4;
        const h = src[qh + l];
        const q1 = ((src[ql + l] & 0xf) | ((h & 3) << 4)) - 32;
        const q2 = ((src[ql + l + 32] & 0xf) | (((h >> 2) & 3) << 4)) - 32;
        const q3 = ((src[ql + l] >> 4) | (((h >> 4) & 3) << 4)) - 32;
        const q4 = ((src[ql + l + 32] >> 4) | (((h >> 6) & 3) << 4)) - 32;
        dst[y + l] = f(d * ((src[sc + is] << 24) >> 24)) * q1;
        dst[y + l + 32] = f(d * ((src[sc + is + 2] << 24) >> 24)) * q2;
        dst[y + l + 64] = f(d * ((src[sc + is + 4] << 24) >> 24)) * q3;
        dst[y + l + 96] = f(d * ((src[sc + is + 6] << 24) >> 24)) * q4;
      }
    }
  }
}

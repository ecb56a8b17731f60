/**
 * Dequantisers for ggml's 32-element "legacy" block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), with the
 * float32 arithmetic of ggml's reference C code (`ggml-quants.c`): each product and sum rounds to float32,
 * no fused multiply-add.
 *
 * Block layouts (little-endian, `half` = binary16):
 * - Q4_0 (18 B): half d; u8 qs[16]            → x = (nibble - 8)·d
 * - Q4_1 (20 B): half d, m; u8 qs[16]         → x = nibble·d + m
 * - Q5_0 (22 B): half d; u32 qh; u8 qs[16]    → x = (nibble | high bit << 4) - 16)·d
 * - Q5_1 (24 B): half d, m; u32 qh; u8 qs[16] → x = (nibble | high bit << 4)·d + m
 * - Q8_0 (34 B): half d; i8 qs[32]            → x = q·d
 *
 * In the 4/5-bit formats byte j holds element j in its low nibble and element j + 16 in its high nibble;
 * bit j of qh is element j's fifth bit and bit j + 16 that of element j + 16.
 *
 * @module
 */

import { HALF_TO_F32 } from "./half.ts";

const f = Math.fround;

/** Elements per block of every legacy format. */
export const QK_LEGACY = 32;

function half(src: Uint8Array, at: number): number {
  return HALF_TO_F32[src[at] | (src[at + 1] << 8)];
}

function u32(src: Uint8Array, at: number): number {
  return (src[at] | (src[at + 1] << 8) | (src[at + 2] << 16) | (src[at + 3] << 24)) >>> 0;
}

/** Dequantises Q4_0 blocks (18 bytes per 32 elements) from `src` into all of `dst`. */
export function dequantizeQ4_0(src: Uint8Array, dst: Float32Array): void {
  for (let b = 0, o = 0; o < dst.length; b += 18, o += 32) {
    const d = half(src, b);
    for (let j = 0; j < 16; j++) {
      const q = src[b + 2 + j];
      dst[o + j] = ((q & 0xf) - 8) * d;
      dst[o + j + 16] = ((q >> 4) - 8) * d;
    }
  }
}

/** Dequantises Q4_1 blocks (20 bytes per 32 elements) from `src` into all of `dst`. */
export function dequantizeQ4_1(src: Uint8Array, dst: Float32Array): void {
  for (let b = 0, o = 0; o < dst.length; b += 20, o += 32) {
    const d = half(src, b);
    const m = half(src, b + 2);
    for (let j = 0; j < 16; j++) {
      const q = src[b + 4 + j];
      dst[o + j] = f((q & 0xf) * d) + m;
      dst[o + j + 16] = f((q >> 4) * d) + m;
    }
  }
}

/** Dequantises Q5_0 blocks (22 bytes per 32 elements) from `src` into all of `dst`. */
export function dequantizeQ5_0(src: Uint8Array, dst: Float32Array): void {
  for (let b = 0, o = 0; o < dst.length; b += 22, o += 32) {
    const d = half(src, b);
    const qh = u32(src, b + 2);
    for (let j = 0; j < 16; j++) {
      const q = src[b + 6 + j];
      const high0 = ((qh >>> j) << 4) & 0x10;
      const high1 = (qh >>> (j + 12)) & 0x10;
      dst[o + j] = (((q & 0xf) | high0) - 16) * d;
      dst[o + j + 16] = (((q >> 4) | high1) - 16) * d;
    }
  }
}

/** Dequantises Q5_1 blocks (24 bytes per 32 elements) from `src` into all of `dst`. */
export function dequantizeQ5_1(src: Uint8Array, dst: Float32Array): void {
  for (let b = 0, o = 0; o < dst.length; b += 24, o += 32) {
    const d = half(src, b);
    const m = half(src, b + 2);
    const qh = u32(src, b + 4);
    for (let j = 0; j < 16; j++) {
      const q = src[b + 8 + j];
      const high0 = ((qh >>> j) << 4) & 0x10;
      const high1 = (qh >>> (j + 12)) & 0x10;
      dst[o + j] = f(((q & 0xf) | high0) * d) + m;
      dst[o + j + 16] = f(((q >> 4) | high1) * d) + m;
    }
  }
}

/** Dequantises Q8_0 blocks (34 bytes per 32 elements) from `src` into all of `dst`. */
export function dequantizeQ8_0(src: Uint8Array, dst: Float32Array): void {
  for (let b = 0, o = 0; o < dst.length; b += 34, o += 32) {
    const d = half(src, b);
    for (let j = 0; j < 32; j++) dst[o + j] = ((src[b + 2 + j] << 24) >> 24) * d;
  }
}

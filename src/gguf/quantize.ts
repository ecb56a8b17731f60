/**
 * CPU quantisers: float32 → ggml blocks, for making synthetic models and test data. Plain
 * round-to-nearest with a simple per-block (or per-sub-block) scale choice; they always produce valid
 * blocks, not the best possible ones.
 *
 * @module
 */

import { f32ToBf16, f32ToHalf, halfToF32 } from "./half.ts";

/** A quantiser: `src.length` must be a multiple of the type's block size; returns the raw blocks. */
export type Quantizer = (src: Float32Array) => Uint8Array;

function quantizeF32(src: Float32Array): Uint8Array {
  const out = new Uint8Array(src.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < src.length; i++) view.setFloat32(4 * i, src[i], true);
  return out;
}

function quantizeF16(src: Float32Array): Uint8Array {
  const out = new Uint8Array(src.length * 2);
  for (let i = 0; i < src.length; i++) {
    const h = f32ToHalf(src[i]);
    out[2 * i] = h & 0xff;
    out[2 * i + 1] = h >> 8;
  }
  return out;
}

function quantizeBF16(src: Float32Array): Uint8Array {
  const out = new Uint8Array(src.length * 2);
  for (let i = 0; i < src.length; i++) {
    const h = f32ToBf16(src[i]);
    out[2 * i] = h & 0xff;
    out[2 * i + 1] = h >> 8;
  }
  return out;
}

/** Rounds half away from zero, like C's roundf. */
function roundAway(x: number): number {
  return x < 0 ? -Math.round(-x) : Math.round(x);
}

function clamp(x: number, lo: number, hi: number): number {
  return x < lo ? lo : x > hi ? hi : x;
}

/** Stores `value` as binary16 at `at` and returns the decoded (stored) value. */
function putHalf(out: Uint8Array, at: number, value: number): number {
  const h = f32ToHalf(value);
  out[at] = h & 0xff;
  out[at + 1] = h >> 8;
  return halfToF32(h);
}

/** Like {@link putHalf} but never stores less than a non-negative `value` (so scales derived from it never clip). */
function putHalfAtLeast(out: Uint8Array, at: number, value: number): number {
  let h = f32ToHalf(value);
  if (halfToF32(h) < value) h++;
  out[at] = h & 0xff;
  out[at + 1] = h >> 8;
  return halfToF32(h);
}

function checkLength(src: Float32Array, blockSize: number, name: string): number {
  if (src.length % blockSize !== 0) {
    throw new RangeError(`${name}: ${src.length} values is not a multiple of the block size ${blockSize}`);
  }
  return src.length / blockSize;
}

/** The value of largest magnitude in src[from, from + n) (keeping its sign), and that magnitude. */
function signedMax(src: Float32Array, from: number, n: number): [value: number, magnitude: number] {
  let value = 0, magnitude = 0;
  for (let i = from; i < from + n; i++) {
    if (Math.abs(src[i]) > magnitude) {
      magnitude = Math.abs(src[i]);
      value = src[i];
    }
  }
  return [value, magnitude];
}

function minMax(src: Float32Array, from: number, n: number): [min: number, max: number] {
  let min = Infinity, max = -Infinity;
  for (let i = from; i < from + n; i++) {
    if (src[i] < min) min = src[i];
    if (src[i] > max) max = src[i];
  }
  return [min, max];
}

/** Q8_0: d = amax / 127, q = round(x / d). */
function quantizeQ8_0(src: Float32Array): Uint8Array {
  const blocks = checkLength(src, 32, "Q8_0");
  const out = new Uint8Array(blocks * 34);
  for (let b = 0; b < blocks; b++) {
    const [, amax] = signedMax(src, 32 * b, 32);
    const d = putHalf(out, 34 * b, amax / 127);
    const id = d ? 1 / d : 0;
    for (let j = 0; j < 32; j++) {
      out[34 * b + 2 + j] = clamp(roundAway(src[32 * b + j] * id), -128, 127) & 0xff;
    }
  }
  return out;
}

/** Q4_0 / Q5_0: d = (signed max) / -2^(bits-1), q = round(x / d) + 2^(bits-1), clamped. */
function quantizeSymmetric(src: Float32Array, bits: 4 | 5): Uint8Array {
  const blocks = checkLength(src, 32, bits === 4 ? "Q4_0" : "Q5_0");
  const size = bits === 4 ? 18 : 22;
  const offset = 1 << (bits - 1);
  const top = (1 << bits) - 1;
  const out = new Uint8Array(blocks * size);
  for (let b = 0; b < blocks; b++) {
    const at = size * b;
    const [max] = signedMax(src, 32 * b, 32);
    const d = putHalf(out, at, max / -offset);
    const id = d ? 1 / d : 0;
    const qs = at + (bits === 4 ? 2 : 6);
    let qh = 0;
    for (let j = 0; j < 16; j++) {
      const q0 = clamp(roundAway(src[32 * b + j] * id) + offset, 0, top);
      const q1 = clamp(roundAway(src[32 * b + j + 16] * id) + offset, 0, top);
      out[qs + j] = (q0 & 0xf) | ((q1 & 0xf) << 4);
      qh |= ((q0 >> 4) << j) | ((q1 >> 4) << (j + 16));
    }
    if (bits === 5) new DataView(out.buffer).setUint32(at + 2, qh >>> 0, true);
  }
  return out;
}

/** Q4_1 / Q5_1: m = min, d = (max - min) / (2^bits - 1), q = round((x - m) / d). */
function quantizeAffine(src: Float32Array, bits: 4 | 5): Uint8Array {
  const blocks = checkLength(src, 32, bits === 4 ? "Q4_1" : "Q5_1");
  const size = bits === 4 ? 20 : 24;
  const top = (1 << bits) - 1;
  const out = new Uint8Array(blocks * size);
  for (let b = 0; b < blocks; b++) {
    const at = size * b;
    const [min, max] = minMax(src, 32 * b, 32);
    const d = putHalf(out, at, (max - min) / top);
    const m = putHalf(out, at + 2, min);
    const id = d ? 1 / d : 0;
    const qs = at + (bits === 4 ? 4 : 8);
    let qh = 0;
    for (let j = 0; j < 16; j++) {
      const q0 = clamp(Math.round((src[32 * b + j] - m) * id), 0, top);
      const q1 = clamp(Math.round((src[32 * b + j + 16] - m) * id), 0, top);
      out[qs + j] = (q0 & 0xf) | ((q1 & 0xf) << 4);
      qh |= ((q0 >> 4) << j) | ((q1 >> 4) << (j + 16));
    }
    if (bits === 5) new DataView(out.buffer).setUint32(at + 4, qh >>> 0, true);
  }
  return out;
}

/**
 * Q4_K / Q5_K: 8 sub-blocks of 32 with x ≈ d·sc·q - dmin·m. Each sub-block takes offset -min(0, min x)
 * and step range / (2^bits - 1); steps and offsets are then coded in six bits against the super-block's
 * d = max step / 63 and dmin = max offset / 63 (both rounded up, so values never clip), and the elements are
 * re-quantised against the stored scales.
 */
function quantizeKAffine(src: Float32Array, bits: 4 | 5): Uint8Array {
  const blocks = checkLength(src, 256, bits === 4 ? "Q4_K" : "Q5_K");
  const size = bits === 4 ? 144 : 176;
  const top = (1 << bits) - 1;
  const out = new Uint8Array(blocks * size);
  const steps = new Float64Array(8), offsets = new Float64Array(8);
  const ls = new Uint8Array(8), lm = new Uint8Array(8);
  for (let b = 0; b < blocks; b++) {
    const at = size * b;
    const x0 = 256 * b;
    let maxStep = 0, maxOffset = 0;
    for (let s = 0; s < 8; s++) {
      const [min, max] = minMax(src, x0 + 32 * s, 32);
      offsets[s] = Math.max(0, -min);
      steps[s] = (max + offsets[s]) / top;
      maxStep = Math.max(maxStep, steps[s]);
      maxOffset = Math.max(maxOffset, offsets[s]);
    }
    const d = putHalfAtLeast(out, at, maxStep / 63);
    const dmin = putHalfAtLeast(out, at + 2, maxOffset / 63);
    for (let s = 0; s < 8; s++) {
      ls[s] = d ? clamp(Math.ceil(steps[s] / d), 0, 63) : 0;
      lm[s] = dmin ? clamp(Math.ceil(offsets[s] / dmin), 0, 63) : 0;
    }
    const sc = at + 4;
    for (let j = 0; j < 4; j++) {
      out[sc + j] = ls[j] | ((ls[j + 4] >> 4) << 6);
      out[sc + j + 4] = lm[j] | ((lm[j + 4] >> 4) << 6);
      out[sc + j + 8] = (ls[j + 4] & 0xf) | ((lm[j + 4] & 0xf) << 4);
    }
    const qs = at + (bits === 4 ? 16 : 48);
    const qh = at + 16;
    for (let s = 0; s < 8; s++) {
      const step = Math.fround(d * ls[s]);
      const offset = Math.fround(dmin * lm[s]);
      const inv = step ? 1 / step : 0;
      const chunk = s >> 1, high = s & 1;
      for (let l = 0; l < 32; l++) {
        const q = clamp(Math.round((src[x0 + 32 * s + l] + offset) * inv), 0, top);
        out[qs + 32 * chunk + l] |= (q & 0xf) << (4 * high);
        if (bits === 5 && q & 16) out[qh + l] |= 1 << s;
      }
    }
  }
  return out;
}

/**
 * Q6_K: 16 sub-blocks of 16 with x ≈ d·sc·(q - 32); sc = round(step / d) in int8 with d = max step / 127,
 * step = sub-block amax / 31, then elements re-quantised against the stored scale.
 */
function quantizeQ6_K(src: Float32Array): Uint8Array {
  const blocks = checkLength(src, 256, "Q6_K");
  const out = new Uint8Array(blocks * 210);
  const steps = new Float64Array(16);
  for (let b = 0; b < blocks; b++) {
    const at = 210 * b;
    const x0 = 256 * b;
    let maxStep = 0;
    for (let s = 0; s < 16; s++) {
      steps[s] = signedMax(src, x0 + 16 * s, 16)[1] / 31;
      maxStep = Math.max(maxStep, steps[s]);
    }
    const d = putHalfAtLeast(out, at + 208, maxStep / 127);
    for (let s = 0; s < 16; s++) {
      const scale = d ? clamp(Math.ceil(steps[s] / d), 0, 127) : 0;
      out[at + 192 + s] = scale;
      const step = Math.fround(d * scale);
      const inv = step ? 1 / step : 0;
      for (let e = 16 * s; e < 16 * s + 16; e++) {
        const q = clamp(roundAway(src[x0 + e] * inv), -32, 31) + 32;
        // element e of the super-block: half h, quarter k (q1..q4), lane l
        const h = e >> 7, k = (e >> 5) & 3, l = e & 31;
        const ql = at + 64 * h + l + (k & 1) * 32;
        out[ql] |= (q & 0xf) << (k >> 1 ? 4 : 0);
        out[at + 128 + 32 * h + l] |= (q >> 4) << (2 * k);
      }
    }
  }
  return out;
}

/** Quantisers by ggml type name. */
export const QUANTIZERS: Readonly<Record<string, Quantizer>> = {
  F32: quantizeF32,
  F16: quantizeF16,
  BF16: quantizeBF16,
  Q8_0: quantizeQ8_0,
  Q4_0: (src) => quantizeSymmetric(src, 4),
  Q5_0: (src) => quantizeSymmetric(src, 5),
  Q4_1: (src) => quantizeAffine(src, 4),
  Q5_1: (src) => quantizeAffine(src, 5),
  Q4_K: (src) => quantizeKAffine(src, 4),
  Q5_K: (src) => quantizeKAffine(src, 5),
  Q6_K: quantizeQ6_K,
};

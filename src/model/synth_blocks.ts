/**
 * Random but valid tensor data of a given ggml type, made directly in the stored format (no float
 * array, no quantiser): random quant bits with block scales chosen so that the decoded values have
 * roughly zero mean and the requested standard deviation. This is what lets a synthetic 8B model be
 * written at disk speed.
 *
 * Every generator fills whole blocks of a caller-provided byte array, taking all its randomness from one
 * {@link Xoshiro128} stream, so the same seed and the same sequence of calls give the same bytes.
 *
 * @module
 */

import { GGMLType } from "../gguf/types.ts";
import { f32ToBf16, f32ToHalf } from "../gguf/half.ts";
import { Xoshiro128 } from "./random.ts";

/** Types {@link fillRandomTensor} can generate. */
export const RANDOM_TYPES: readonly GGMLType[] = [
  GGMLType.F32,
  GGMLType.F16,
  GGMLType.BF16,
  GGMLType.Q8_0,
  GGMLType.Q4_0,
  GGMLType.Q4_K,
  GGMLType.Q5_K,
  GGMLType.Q6_K,
];

/** 65,536 standard-normal samples from a fixed seed: random 16-bit indices into it give normal values. */
const NORMAL_TABLE: Float64Array = (() => {
  const rng = new Xoshiro128(0x5eed);
  const table = new Float64Array(65536);
  for (let i = 0; i < table.length; i++) table[i] = rng.nextNormal();
  return table;
})();

const f16Tables = new Map<number, Uint16Array>();
const f32Tables = new Map<number, Float32Array>();

function f16Table(sigma: number, brain = false): Uint16Array {
  const key = brain ? -sigma : sigma;
  let table = f16Tables.get(key);
  if (!table) {
    table = new Uint16Array(65536);
    const encode = brain ? f32ToBf16 : f32ToHalf;
    for (let i = 0; i < 65536; i++) table[i] = encode(sigma * NORMAL_TABLE[i]);
    f16Tables.set(key, table);
  }
  return table;
}

function f32Table(sigma: number): Float32Array {
  let table = f32Tables.get(sigma);
  if (!table) {
    table = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) table[i] = sigma * NORMAL_TABLE[i];
    f32Tables.set(sigma, table);
  }
  return table;
}

/** Writes binary16 `value` little-endian at `at`. */
function putHalf(out: Uint8Array, at: number, value: number): void {
  const h = f32ToHalf(value);
  out[at] = h & 0xff;
  out[at + 1] = h >> 8;
}

/** A per-block spread multiplier in [0.75, 1.25) from a random byte, so blocks are not all alike. */
function spread(byte: number): number {
  return 0.75 + byte / 512;
}

/**
 * A signed per-block scale multiplier from two random bytes: the spread of {@link spread} with a random
 * sign, which cancels the −½ offset of formats whose quants are not symmetric around zero.
 */
function signedSpread(byte: number, signByte: number): number {
  return signByte & 1 ? -spread(byte) : spread(byte);
}

// Root-mean-square of the centred quant values of each format (uniform random quants):
const RMS_Q8_0 = Math.sqrt((256 * 256 - 1) / 12 + 0.25); // int8 in [-128, 127]
const RMS_Q4_0 = Math.sqrt((16 * 16 - 1) / 12 + 0.25); // (q - 8), q in [0, 15]
const STD_Q4 = Math.sqrt((16 * 16 - 1) / 12); // q in [0, 15] around its mean 7.5
const STD_Q5 = Math.sqrt((32 * 32 - 1) / 12); // q in [0, 31] around 15.5
const RMS_Q6 = Math.sqrt((64 * 64 - 1) / 12 + 0.25); // (q - 32), q in [0, 63]
/** Six-bit sub-block scales are drawn from [32, 63]; their root-mean-square. */
const RMS_SCALE6 = (() => {
  let sum = 0;
  for (let s = 32; s <= 63; s++) sum += s * s;
  return Math.sqrt(sum / 32);
})();

/**
 * Fills `out` (whole blocks of type `type`, `out.byteLength` a multiple of the block bytes and of 4
 * unless it is the tensor's last chunk) with random values of about zero mean and standard deviation
 * `sigma`, drawing from `rng`.
 */
export function fillRandomTensor(type: GGMLType, out: Uint8Array, sigma: number, rng: Xoshiro128): void {
  switch (type) {
    case GGMLType.F32: {
      const table = f32Table(sigma);
      const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
      const n = out.byteLength >>> 2;
      for (let i = 0; i < n; i++) view.setFloat32(4 * i, table[rng.nextU32() >>> 16], true);
      return;
    }
    case GGMLType.F16:
    case GGMLType.BF16: {
      const table = f16Table(sigma, type === GGMLType.BF16);
      const n = out.byteLength >>> 1;
      const words = new Uint32Array(Math.min(n >>> 1, 1 << 16));
      for (let i = 0; i < n;) {
        rng.fillU32(words);
        for (let w = 0; w < words.length && i < n; w++) {
          const r = words[w];
          const a = table[r & 0xffff];
          out[2 * i] = a & 0xff;
          out[2 * i + 1] = a >> 8;
          i++;
          if (i < n) {
            const b = table[r >>> 16];
            out[2 * i] = b & 0xff;
            out[2 * i + 1] = b >> 8;
            i++;
          }
        }
      }
      return;
    }
    case GGMLType.Q8_0: {
      // Block (34 B): half d; int8 qs[32]. value = d · q (d of random sign).
      rng.fillBytes(out);
      const d = sigma / RMS_Q8_0;
      for (let b = 0; b < out.byteLength; b += 34) putHalf(out, b, d * signedSpread(out[b], out[b + 1]));
      return;
    }
    case GGMLType.Q4_0: {
      // Block (18 B): half d; u8 qs[16] (two 4-bit quants). value = d · (q − 8) (d of random sign).
      rng.fillBytes(out);
      const d = sigma / RMS_Q4_0;
      for (let b = 0; b < out.byteLength; b += 18) putHalf(out, b, d * signedSpread(out[b], out[b + 1]));
      return;
    }
    case GGMLType.Q4_K:
    case GGMLType.Q5_K: {
      // Super-block: half d; half dmin; u8 scales[12] (eight 6-bit scale/min pairs); [Q5_K: u8 qh[32]];
      // u8 qs[128]. value = d · scale · q − dmin · min per 32-value sub-block. With dmin = k·d and
      // min ≈ scale · mean(q) / k the sub-blocks are centred.
      const q5 = type === GGMLType.Q5_K;
      const bytes = q5 ? 176 : 144;
      const meanQ = q5 ? 15.5 : 7.5;
      const k = q5 ? 16 : 8;
      rng.fillBytes(out);
      const d0 = sigma / ((q5 ? STD_Q5 : STD_Q4) * RMS_SCALE6);
      const sc = new Uint8Array(8);
      const mn = new Uint8Array(8);
      for (let b = 0; b < out.byteLength; b += bytes) {
        const d = d0 * spread(out[b]);
        const dHalf = f32ToHalf(d);
        const dminHalf = f32ToHalf(k * d);
        for (let j = 0; j < 8; j++) {
          sc[j] = 32 + (out[b + 4 + j] & 31);
          mn[j] = Math.min(63, Math.round((sc[j] * meanQ) / k));
        }
        out[b] = dHalf & 0xff;
        out[b + 1] = dHalf >> 8;
        out[b + 2] = dminHalf & 0xff;
        out[b + 3] = dminHalf >> 8;
        packScaleMinK4(out, b + 4, sc, mn);
      }
      return;
    }
    case GGMLType.Q6_K: {
      // Super-block (210 B): u8 ql[128]; u8 qh[64]; int8 scales[16]; half d.
      // value = d · scale · (q − 32) per 16-value group (scales of random sign).
      rng.fillBytes(out);
      const d0 = sigma / (RMS_Q6 * RMS_SCALE6);
      for (let b = 0; b < out.byteLength; b += 210) {
        for (let j = 0; j < 16; j++) {
          // |scale| in [32, 63] with a random sign (stored as int8), which centres the values.
          const r = out[b + 192 + j];
          const scale = 32 + (r & 31);
          out[b + 192 + j] = r & 32 ? 256 - scale : scale;
        }
        putHalf(out, b + 208, d0 * spread(out[b + 208]));
      }
      return;
    }
    default:
      throw new RangeError(`no random generator for ggml type ${type}`);
  }
}

/**
 * Packs eight 6-bit scales and mins into the 12-byte `scales` field of a Q4_K/Q5_K super-block at `at`:
 * pairs 0..3 in the low six bits of bytes 0..3 (scales) and 4..7 (mins); pairs 4..7 with their low
 * four bits in the nibbles of bytes 8..11 and their top two bits in the spare bits of bytes 0..7.
 */
export function packScaleMinK4(out: Uint8Array, at: number, scales: Uint8Array, mins: Uint8Array): void {
  for (let j = 0; j < 4; j++) {
    out[at + j] = (scales[j] & 63) | ((scales[j + 4] >> 4) << 6);
    out[at + j + 4] = (mins[j] & 63) | ((mins[j + 4] >> 4) << 6);
    out[at + j + 8] = (scales[j + 4] & 0xf) | ((mins[j + 4] & 0xf) << 4);
  }
}

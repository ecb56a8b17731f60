/**
 * CPU quantisers: float32 → ggml blocks, for making synthetic models and test data. Plain
 * round-to-nearest with a simple per-block (or per-sub-block) scale choice; they always produce valid
 * blocks, not the best possible ones.
 *
 * @module
 */

import { f32ToBf16, f32ToHalf } from "./half.ts";

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

/** Quantisers by ggml type name. */
export const QUANTIZERS: Readonly<Record<string, Quantizer>> = {
  F32: quantizeF32,
  F16: quantizeF16,
  BF16: quantizeBF16,
};

/**
 * Test data for quantised weights: random but valid ggml blocks (every quant bit random, f16 scales finite
 * and modest), and the CPU reference of `y = x · Wᵀ` through the type table's dequantiser.
 */

import { rope as ropeRows } from "../src/model/ops.ts";
import { f32ToBf16, f32ToHalf } from "../src/gguf/half.ts";
import { GGMLType, typeInfo } from "../src/gguf/types.ts";
import type { Gpu } from "../src/gpu/device.ts";
import { GpuWeight } from "../src/gpu/weights.ts";

/** Byte offsets of the f16 scale fields inside one block, per type. */
const HALF_FIELDS: Record<string, number[]> = {
  Q8_0: [0],
  Q4_0: [0],
  Q4_1: [0, 2],
  Q5_0: [0],
  Q5_1: [0, 2],
  Q2_K: [80, 82],
  Q3_K: [108],
  Q4_K: [0, 2],
  Q5_K: [0, 2],
  Q6_K: [208],
};

/** Every type the GPU kernels support, by name. */
export const TYPES: string[] = [
  "F32",
  "F16",
  "BF16",
  "Q8_0",
  "Q4_0",
  "Q4_1",
  "Q5_0",
  "Q5_1",
  "Q2_K",
  "Q3_K",
  "Q4_K",
  "Q5_K",
  "Q6_K",
];

/** ggml type number of `name`. */
export function typeOf(name: string): number {
  return GGMLType[name as keyof typeof GGMLType];
}

/** A uniform random number in [-1, 1), never zero (a zero could hide a value the kernel skipped). */
export function rand(): number {
  return (Math.random() * 2 - 1) || 0.5;
}

/** Random f32 values in [-1, 1), never zero. */
export function randomF32(n: number): Float32Array<ArrayBuffer> {
  return Float32Array.from({ length: n }, rand);
}

/** `nBlocks` random valid blocks of type `name`. */
export function randomBlocks(name: string, nBlocks: number): Uint8Array {
  const info = typeInfo(typeOf(name), name);
  const bytes = new Uint8Array(nBlocks * info.bytesPerBlock);
  const view = new DataView(bytes.buffer);
  if (name === "F32") {
    for (let i = 0; i < nBlocks; i++) view.setFloat32(4 * i, rand(), true);
    return bytes;
  }
  if (name === "F16" || name === "BF16") {
    const enc = name === "F16" ? f32ToHalf : f32ToBf16;
    for (let i = 0; i < nBlocks; i++) view.setUint16(2 * i, enc(rand()), true);
    return bytes;
  }
  for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  for (let b = 0; b < nBlocks; b++) {
    for (const at of HALF_FIELDS[name]) {
      view.setUint16(b * info.bytesPerBlock + at, f32ToHalf(rand() * 0.05), true);
    }
  }
  return bytes;
}

/** CPU reference: the weight dequantised by the type table, `[rows][cols]`. */
export function dequantized(name: string, bytes: Uint8Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols);
  typeInfo(typeOf(name), name).dequantize(bytes, out);
  return out;
}

/**
 * Checks `got` ([m][rows]) against `x · Wᵀ` computed from the dequantised `w`: each element within `tol`
 * times Σ|w·x| of its dot product (f32 accumulation on both sides, in a different order). Returns the
 * first mismatch as a message, or undefined.
 */
export function compareLinear(
  got: Float32Array,
  w: Float32Array,
  x: Float32Array,
  m: number,
  rows: number,
  cols: number,
  tol: number,
): string | undefined {
  for (let t = 0; t < m; t++) {
    for (let r = 0; r < rows; r++) {
      let sum = 0;
      let abs = 0;
      for (let c = 0; c < cols; c++) {
        const p = w[r * cols + c] * x[t * cols + c];
        sum += p;
        abs += Math.abs(p);
      }
      const g = got[t * rows + r];
      if (!(Math.abs(g - sum) <= tol * abs + 1e-30)) {
        return `y[${t}][${r}] = ${g}, expected ${sum} (Σ|w·x| = ${abs})`;
      }
    }
  }
  return undefined;
}

/** A random weight of type `name` with `rows` rows of `cols` values, on the GPU (optionally split) and dequantised. */
export function randomWeight(
  gpu: Gpu,
  label: string,
  name: string,
  rows: number,
  cols: number,
  maxPartBytes?: number,
): { weight: GpuWeight; w: Float32Array } {
  const info = typeInfo(typeOf(name), name);
  const bytes = randomBlocks(name, rows * cols / info.blockSize);
  const weight = GpuWeight.fromBytes(gpu, label, typeOf(name), [cols, rows], bytes, { maxPartBytes });
  return { weight, w: dequantized(name, bytes, rows, cols) };
}

/** Row products of `w` ([rows][cols]) with `x` ([m][cols]): the sum and the sum of magnitudes, in f64. */
export function products(
  w: Float32Array,
  x: Float32Array,
  m: number,
  rows: number,
  cols: number,
): { sum: Float64Array; abs: Float64Array } {
  const sum = new Float64Array(m * rows);
  const abs = new Float64Array(m * rows);
  for (let t = 0; t < m; t++) {
    for (let r = 0; r < rows; r++) {
      let s = 0, a = 0;
      for (let c = 0; c < cols; c++) {
        const p = w[r * cols + c] * x[t * cols + c];
        s += p;
        a += Math.abs(p);
      }
      sum[t * rows + r] = s;
      abs[t * rows + r] = a;
    }
  }
  return { sum, abs };
}

/**
 * The CPU reference of a QKV product with RoPE: for weights `ws` (Q, K, V, dequantised `[rows][cols]`) and
 * `x` (`[m][cols]`), each product's rows with their magnitudes; Q and K rotated per head (`heads` = query and
 * KV heads of `headDim` values) at positions pos0 + t, V as it is.
 */
export function qkvReference(
  ws: readonly { w: Float32Array }[],
  x: Float32Array,
  m: number,
  cols: number,
  rope: { headDim: number; qHeads: number; kvHeads: number; pos0: number; invFreq: Float32Array },
): { want: Float32Array; abs: Float64Array; rows: number }[] {
  const heads = [rope.qHeads, rope.kvHeads, 0];
  return ws.map(({ w }, n) => {
    const rows = (n === 0 ? rope.qHeads : rope.kvHeads) * rope.headDim;
    const { sum, abs } = products(w, x, m, rows, cols);
    const want = Float32Array.from(sum);
    if (heads[n] > 0) {
      for (let t = 0; t < m; t++) {
        ropeRows(
          want.subarray(t * rows, (t + 1) * rows),
          heads[n],
          rope.headDim,
          rope.pos0 + t,
          rope.invFreq,
        );
      }
    }
    return { want, abs, rows };
  });
}

// Checks of prefill products whose tiles hold f16 values (the f16 and cooperative-matrix kernels) against
// the CPU product of the weights and activations rounded to f16, summed in f64 (`products` of
// ./gpu_quant_data.ts): what may differ is only the rounding of the kernel's sums.
import { ok } from "node:assert/strict";
import { f32ToHalf, halfToF32 } from "../src/gguf/half.ts";

/** The CPU product of f16-rounded values: sums and sums of the products' magnitudes, [m][rows]. */
export interface RoundedProducts {
  sum: Float64Array;
  abs: Float64Array;
}

/** `values` rounded to f16 (what the kernels' tiles hold). */
export function toHalf(values: Float32Array): Float32Array {
  return values.map((v) => halfToF32(f32ToHalf(v)));
}

/**
 * Checks every element of `got` against `want` within `perAbs` × the sum of its products' magnitudes
 * (plus 1e-6); returns the summed error and magnitudes, for a check of the mean.
 */
export function checkRoundedProducts(
  what: string,
  got: Float32Array,
  want: RoundedProducts,
  perAbs: number,
): { error: number; scale: number } {
  let error = 0;
  let scale = 0;
  for (let i = 0; i < want.sum.length; i++) {
    const diff = Math.abs(got[i] - want.sum[i]);
    ok(diff <= perAbs * want.abs[i] + 1e-6, `${what}: y[${i}] = ${got[i]}, expected ${want.sum[i]}`);
    error += diff;
    scale += want.abs[i];
  }
  return { error, scale };
}

/**
 * Checks silu(gate) · up (`got`, the first `count` elements) against the rounded gate and up products, each
 * sum's bound (`perAbs` × its magnitudes) carried through silu(g) · u (silu' is at most 1.1).
 */
export function checkRoundedSwiGlu(
  what: string,
  got: Float32Array,
  gate: RoundedProducts,
  up: RoundedProducts,
  count: number,
  perAbs: number,
): void {
  const silu = (v: number) => v / (1 + Math.exp(-v));
  for (let i = 0; i < count; i++) {
    const want = silu(gate.sum[i]) * up.sum[i];
    const bound =
      perAbs * (1.1 * gate.abs[i] * Math.abs(up.sum[i]) + Math.abs(silu(gate.sum[i])) * up.abs[i]) +
      1e-6;
    ok(Math.abs(got[i] - want) <= bound, `${what}: out[${i}] = ${got[i]}, expected ${want}`);
  }
}

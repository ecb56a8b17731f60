/**
 * The two orders of the values inside one attention head. Hugging Face Llama checkpoints rotate the two
 * HALVES of a head with RoPE (value j pairs with j + D/2); GGUF `llama` files rotate ADJACENT pairs
 * (2j, 2j+1), because llama.cpp's converter permutes the rows of the Q and K projections per head so that
 * `k_gguf[2j + h] = k_hf[h·D/2 + j]` (h ∈ {0, 1}, j < D/2). Keys computed from a GGUF model are in GGUF
 * order; gates trained on Hugging Face models expect HF order.
 *
 * @module
 */

/** Which order the values of a head are in: `hf` (rotate halves) or `gguf` (rotate adjacent pairs). */
export type KeyOrder = "gguf" | "hf";

/** Every key order, for flags and validation. */
export const KEY_ORDERS: readonly KeyOrder[] = ["gguf", "hf"];

/**
 * For a head of `headDim` values (even), the HF index that GGUF index `i` holds:
 * `hfIndexOfGguf(D)[2j + h] = h·D/2 + j`.
 */
export function hfIndexOfGguf(headDim: number): Int32Array {
  const half = headDim / 2;
  const map = new Int32Array(headDim);
  for (let j = 0; j < half; j++) {
    map[2 * j] = j;
    map[2 * j + 1] = half + j;
  }
  return map;
}

/**
 * Reorders every run of `headDim` values of `x` (heads back to back) from HF order to GGUF order.
 * Returns a new array.
 */
export function hfToGguf(x: Float32Array, headDim: number): Float32Array {
  const map = hfIndexOfGguf(headDim);
  const out = new Float32Array(x.length);
  for (let base = 0; base < x.length; base += headDim) {
    for (let i = 0; i < headDim; i++) out[base + i] = x[base + map[i]];
  }
  return out;
}

/**
 * Reorders every run of `headDim` values of `x` from GGUF order to HF order (the inverse of
 * {@link hfToGguf}). Returns a new array.
 */
export function ggufToHf(x: Float32Array, headDim: number): Float32Array {
  const map = hfIndexOfGguf(headDim);
  const out = new Float32Array(x.length);
  for (let base = 0; base < x.length; base += headDim) {
    for (let i = 0; i < headDim; i++) out[base + map[i]] = x[base + i];
  }
  return out;
}

/**
 * Exact conversions between float32 and the two 16-bit float formats GGUF stores: IEEE binary16 (`F16`,
 * ggml_half) and bfloat16 (`BF16`). Decoding is exact; encoding rounds to nearest, ties to even, the way
 * the hardware converters ggml uses do.
 *
 * @module
 */

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

function decodeHalfBits(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exponent = (h >> 10) & 0x1f;
  const mantissa = h & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 31) return mantissa ? NaN : sign * Infinity;
  return sign * (1024 + mantissa) * 2 ** (exponent - 25);
}

/** Float32 value of every binary16 bit pattern (index = the 16 bits); NaN patterns decode to NaN. */
export const HALF_TO_F32: Float32Array = (() => {
  const table = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) table[h] = decodeHalfBits(h);
  return table;
})();

/** Decodes one binary16 bit pattern (0..65535) to a number, exactly. */
export function halfToF32(bits: number): number {
  return HALF_TO_F32[bits & 0xffff];
}

/** Encodes a number as binary16 bits, rounding to nearest even (overflow gives ±Infinity, NaN stays NaN). */
export function f32ToHalf(value: number): number {
  scratchF32[0] = value;
  const x = scratchU32[0];
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  const mantissa = x & 0x7fffff;
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa ? 0x200 | (mantissa >>> 13) : 0);
  const unbiased = exponent - 127;
  if (unbiased > 15) return sign | 0x7c00;
  if (unbiased >= -14) {
    // normal half: drop 13 mantissa bits with round-to-nearest-even; a carry may bump the exponent
    let bits = ((unbiased + 15) << 10) | (mantissa >>> 13);
    const rest = mantissa & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && (bits & 1))) bits++;
    return sign | bits;
  }
  if (unbiased < -25) return sign; // below half the smallest subnormal: rounds to zero
  // subnormal half: value = m * 2^-24 with the implicit bit restored
  const full = mantissa | 0x800000;
  const shift = -unbiased - 14 + 13; // 14..24
  let bits = full >>> shift;
  const rest = full & ((1 << shift) - 1);
  const halfway = 1 << (shift - 1);
  if (rest > halfway || (rest === halfway && (bits & 1))) bits++;
  return sign | bits;
}

/** Decodes one bfloat16 bit pattern (the high 16 bits of a float32) exactly. */
export function bf16ToF32(bits: number): number {
  scratchU32[0] = (bits & 0xffff) << 16;
  return scratchF32[0];
}

/** Encodes a number as bfloat16 bits, rounding to nearest even (NaN stays a quiet NaN), as ggml does. */
export function f32ToBf16(value: number): number {
  scratchF32[0] = value;
  const x = scratchU32[0];
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x40) & 0xffff;
  return ((x + (0x7fff + ((x >>> 16) & 1))) >>> 16) & 0xffff;
}

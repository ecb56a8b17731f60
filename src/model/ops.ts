/**
 * Plain f32 building blocks of the Llama forward pass on the CPU. They are the oracle for the GPU
 * kernels and for {@link ./reference.ts}: simple loops, no tricks, obviously right.
 *
 * Layout conventions (those of GGUF/ggml): a weight matrix with ggml shape `[cols, rows]` is stored
 * row-major, `rows` rows of `cols` contiguous values, and `y = W·x` means `y[r] = Σ_c W[r·cols + c]·x[c]`.
 *
 * @module
 */

/** `out[i] = x[i] / sqrt(mean(x²) + eps) · w[i]` over one vector of length `x.length`. */
export function rmsnorm(out: Float32Array, x: Float32Array, w: Float32Array, eps: number): void {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const scale = 1 / Math.sqrt(ss / x.length + eps);
  for (let i = 0; i < x.length; i++) out[i] = x[i] * scale * w[i];
}

/** `out[r] = Σ_c w[r·cols + c] · x[c]` for `rows = out.length`, `cols = x.length`. */
export function matvec(out: Float32Array, w: Float32Array, x: Float32Array): void {
  const cols = x.length;
  for (let r = 0; r < out.length; r++) {
    let s = 0;
    const base = r * cols;
    for (let c = 0; c < cols; c++) s += w[base + c] * x[c];
    out[r] = s;
  }
}

/** SiLU(x) = x · sigmoid(x). */
export function silu(x: number): number {
  return x / (1 + Math.exp(-x));
}

/** SwiGLU in place: `gate[i] = silu(gate[i]) · up[i]`. */
export function swiglu(gate: Float32Array, up: Float32Array): void {
  for (let i = 0; i < gate.length; i++) gate[i] = silu(gate[i]) * up[i];
}

/** Numerically stable softmax over `x[0..n)` in place. */
export function softmax(x: Float32Array, n: number = x.length): void {
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (x[i] > max) max = x[i];
  let sum = 0;
  for (let i = 0; i < n; i++) {
    x[i] = Math.exp(x[i] - max);
    sum += x[i];
  }
  for (let i = 0; i < n; i++) x[i] /= sum;
}

/** Llama-3 style RoPE frequency scaling (`rope.scaling.type = llama3`). */
export interface Llama3RopeScaling {
  /** Overall factor (8 for Llama 3.1). */
  factor: number;
  /** Wavelengths longer than `originalContext / lowFreqFactor` are divided by `factor`. */
  lowFreqFactor: number;
  /** Wavelengths shorter than `originalContext / highFreqFactor` are kept. */
  highFreqFactor: number;
  /** Context length the base model was trained with (8192 for Llama 3). */
  originalContext: number;
}

/**
 * Per-pair inverse frequencies θ_i = base^(−2i/ropeDim) for i < ropeDim/2, optionally divided by
 * per-pair factors (GGUF `rope_freqs.weight`) or by Llama-3 scaling computed from its parameters.
 */
export function ropeInverseFrequencies(
  ropeDim: number,
  base: number,
  freqFactors?: Float32Array,
  llama3?: Llama3RopeScaling,
): Float32Array {
  const inv = new Float32Array(ropeDim / 2);
  for (let i = 0; i < ropeDim / 2; i++) {
    let f = Math.pow(base, (-2 * i) / ropeDim);
    if (freqFactors) {
      f /= freqFactors[i];
    } else if (llama3) {
      const { factor, lowFreqFactor, highFreqFactor, originalContext } = llama3;
      const wavelen = (2 * Math.PI) / f;
      const lowWavelen = originalContext / lowFreqFactor;
      const highWavelen = originalContext / highFreqFactor;
      if (wavelen > lowWavelen) {
        f /= factor;
      } else if (wavelen >= highWavelen) {
        const smooth = (originalContext / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
        f = (1 - smooth) * (f / factor) + smooth * f;
      }
    }
    inv[i] = f;
  }
  return inv;
}

/**
 * Rotary embedding in place, GGUF `llama` ("normal") layout: within each head of `headDim` values the
 * adjacent pairs (2i, 2i+1) for 2i < ropeDim are rotated by angle `pos · invFreq[i]`.
 */
export function rope(
  x: Float32Array,
  nHeads: number,
  headDim: number,
  pos: number,
  invFreq: Float32Array,
): void {
  for (let h = 0; h < nHeads; h++) {
    const o = h * headDim;
    for (let i = 0; i < invFreq.length; i++) {
      const angle = pos * invFreq[i];
      const c = Math.cos(angle);
      const s = Math.sin(angle);
      const a = x[o + 2 * i];
      const b = x[o + 2 * i + 1];
      x[o + 2 * i] = a * c - b * s;
      x[o + 2 * i + 1] = a * s + b * c;
    }
  }
}

/**
 * Attention of one query head over `n` cached keys/values (each `headDim` long, at stride `stride`
 * floats from `offset`): `out = Σ_j softmax(q·k_j · scale)_j · v_j`.
 */
export function attendOne(
  out: Float32Array,
  q: Float32Array,
  keys: Float32Array,
  values: Float32Array,
  n: number,
  headDim: number,
  stride: number,
  offset: number,
  scale: number,
  qOffset = 0,
  outOffset = 0,
): void {
  const scores = new Float32Array(n);
  for (let j = 0; j < n; j++) {
    let s = 0;
    const kb = j * stride + offset;
    for (let d = 0; d < headDim; d++) s += q[qOffset + d] * keys[kb + d];
    scores[j] = s * scale;
  }
  softmax(scores, n);
  for (let d = 0; d < headDim; d++) out[outOffset + d] = 0;
  for (let j = 0; j < n; j++) {
    const vb = j * stride + offset;
    const p = scores[j];
    for (let d = 0; d < headDim; d++) out[outOffset + d] += p * values[vb + d];
  }
}

/**
 * The write gate on the CPU, the oracle for the GPU kernel: per layer, KV head h and token t,
 *
 *   x = [ rms(pre_k[t,h]) ⊙ preNorm ; rms(post_k[t,h]) ⊙ postNorm ]        rms(v) = v / sqrt(mean(v²) + ε)
 *   g = max(sigmoid(w2[h] · act(W1[h] · x + b1[h]) + b2[h]), scoreFloor)
 *
 * with act the exact (erf) GELU or SiLU. Arithmetic is in f64; the result is rounded to f32 once.
 *
 * @module
 */

import { BadFlagError } from "../errors.ts";
import type { GateWeights } from "./format.ts";

/**
 * The error function, |error| < 1e-14: its Maclaurin series for |x| < 3, the continued fraction of
 * erfc beyond (evaluated bottom-up), ±1 past |x| = 6.
 */
export function erf(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const a = Math.abs(x);
  let r: number;
  if (a < 3) {
    // erf(a) = 2/√π · Σ_n (−1)^n a^(2n+1) / (n! (2n+1))
    let term = a;
    let sum = a;
    for (let n = 1; n < 100; n++) {
      term *= (-a * a) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    r = (2 / Math.sqrt(Math.PI)) * sum;
  } else if (a < 6) {
    // erfc(a) = exp(−a²)/√π · 1/(a + (1/2)/(a + 1/(a + (3/2)/(a + …))))
    let f = 0;
    for (let k = 80; k >= 1; k--) f = k / 2 / (a + f);
    r = 1 - Math.exp(-a * a) / Math.sqrt(Math.PI) / (a + f);
  } else {
    r = 1;
  }
  return x < 0 ? -r : r;
}

/** Exact GELU: x · Φ(x) = x/2 · (1 + erf(x/√2)) (PyTorch's `nn.GELU()` default). */
export function gelu(x: number): number {
  return 0.5 * x * (1 + erf(x / Math.SQRT2));
}

/**
 * Gate scores of layer `layer` for `nTokens` tokens. `preK` and `postK` are `[nTokens][kvHeads][headDim]`
 * (the key before and after RoPE, in the gate's `keyOrder`); the result is `[kvHeads][nTokens]`.
 */
export function gateScores(
  gate: GateWeights,
  layer: number,
  preK: Float32Array,
  postK: Float32Array,
  nTokens: number,
): Float32Array {
  const { kvHeads: H, headDim: D, inner } = gate;
  const w = gate.layers[layer];
  if (!w) throw new BadFlagError(`gate: layer ${layer} does not exist (${gate.layers.length} layers)`);
  const n = nTokens * H * D;
  if (preK.length < n || postK.length < n) {
    throw new BadFlagError(`gate: keys hold ${Math.min(preK.length, postK.length)} values, ${n} needed`);
  }
  const act = gate.activation === "gelu" ? gelu : (v: number) => v / (1 + Math.exp(-v));
  const out = new Float32Array(H * nTokens);
  const x = new Float64Array(2 * D);
  const normInto = (src: Float32Array, o: number, weight: Float32Array, at: number) => {
    let ss = 0;
    for (let d = 0; d < D; d++) ss += src[o + d] * src[o + d];
    // The reference normalises in f32 and multiplies by the weight after a cast back to the input dtype.
    const scale = 1 / Math.sqrt(ss / D + gate.normEpsilon);
    for (let d = 0; d < D; d++) x[at + d] = Math.fround(src[o + d] * scale) * weight[d];
  };
  for (let t = 0; t < nTokens; t++) {
    for (let h = 0; h < H; h++) {
      const o = (t * H + h) * D;
      normInto(preK, o, w.preNorm, 0);
      normInto(postK, o, w.postNorm, D);
      let logit = w.b2[h];
      for (let r = 0; r < inner; r++) {
        const row = (h * inner + r) * 2 * D;
        let a = w.b1[h * inner + r];
        for (let c = 0; c < 2 * D; c++) a += w.w1[row + c] * x[c];
        logit += w.w2[h * inner + r] * act(a);
      }
      out[h * nTokens + t] = Math.max(1 / (1 + Math.exp(-logit)), gate.scoreFloor);
    }
  }
  return out;
}

/**
 * The CPU reference of the GPU sampling op (`wgsl/sample.wgsl`, {@link createSample}): the same candidate
 * rules (top k by value then lowest id, capped at `SAMPLE_CANDIDATE_CAP`), the same cuts and the same
 * counter-based random number, computed plainly in f64. Where f32 rounding on the GPU could tip a
 * decision (a cumulative sum within `tolerance` of the top-p threshold or of the drawn point), the result
 * says so, so tests can demand exact agreement everywhere else.
 *
 * @module
 */

import { sampleParams, type SampleSettings, sampleUniform } from "./sample.ts";

/** One reference draw. */
export interface ReferenceDraw {
  /** The token drawn. */
  token: number;
  /** Whether f32 rounding could change the outcome (a boundary lies within the tolerance). */
  fragile: boolean;
  /** The candidates that survived top-k, top-p and min-p, most likely first. */
  kept: number[];
}

/**
 * Draws a token from `logits` as the GPU op does for draw index `draw`, with `history` the tokens so far
 * (the last `repeatLastN` are penalised). `tolerance` is relative to the total mass.
 */
export function sampleReference(
  logits: Float32Array,
  settings: SampleSettings,
  history: readonly number[],
  draw: number,
  tolerance = 1e-5,
): ReferenceDraw {
  const V = logits.length;
  const p = sampleParams(settings, V);
  const recent = new Set(
    p.penaltyOn ? history.slice(Math.max(0, history.length - settings.repeatLastN)) : [],
  );
  const work = new Float32Array(V);
  for (let i = 0; i < V; i++) {
    let x = logits[i];
    if (recent.has(i)) x = Math.fround(x * (x > 0 ? p.invPenalty : p.penalty));
    work[i] = x === 0 ? 0 : x; // −0 counts as +0
  }
  // The k largest values, ties to the lowest id, in that order.
  const order = Array.from({ length: V }, (_, i) => i);
  order.sort((a, b) => work[b] - work[a] || a - b);
  const k = p.k;
  const ids = order.slice(0, k);
  const x = ids.map((i) => work[i]);
  const x0 = x[0];
  const cum: number[] = [];
  let run = 0;
  for (let i = 0; i < k; i++) cum.push(run += Math.exp(Math.fround(x[i] - x0)));
  let mass = cum[k - 1];
  if (p.fullMass) {
    mass = 0;
    for (let i = 0; i < V; i++) mass += Math.exp(work[i] - x0);
  }
  let fragile = false;
  let keep = k;
  if (p.topP < 1) {
    const need = p.topP * mass;
    const near = (c: number) => Math.abs(c - need) <= tolerance * mass;
    const first = cum.findIndex((c) => c >= need);
    const at = first < 0 ? k - 1 : first;
    if (first >= 0) keep = first + 1;
    if (near(cum[at]) || (at > 0 && near(cum[at - 1]))) fragile = true;
  }
  if (p.minPOn) {
    const cutoff = Math.fround(x0 + p.logMinP);
    for (let i = 1; i < keep; i++) {
      if (x[i] < cutoff) {
        keep = i;
        break;
      }
    }
  }
  const weights: number[] = [];
  run = 0;
  for (let i = 0; i < keep; i++) {
    weights.push(run += Math.exp(Math.fround(Math.fround(x[i] - x0) * p.invTemp)));
  }
  const total = weights[keep - 1];
  const target = sampleUniform(p.seed, draw) * total;
  let pick = weights.findIndex((w) => w > target);
  if (pick < 0) pick = keep - 1;
  const near = (w: number) => Math.abs(w - target) <= tolerance * total;
  if (keep > 1 && (near(weights[pick]) || (pick > 0 && near(weights[pick - 1])))) fragile = true;
  return { token: ids[pick], fragile, kept: ids.slice(0, keep) };
}

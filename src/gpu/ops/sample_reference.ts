/**
 * The CPU reference of the GPU sampling op (`wgsl/sample.wgsl`, {@link createSample}): the same candidate
 * rules (top k by value then lowest id, capped at `SAMPLE_CANDIDATE_CAP`), the same cuts and the same
 * counter-based random number, computed plainly in f64. Where f32 rounding on the GPU could tip a
 * decision (a cumulative sum within `tolerance` of the top-p threshold or of the drawn point), the result
 * says so, so tests can demand exact agreement everywhere else.
 *
 * Without the cap ({@link sampleExact}) the same rules draw over the whole vocabulary: how the GPU model
 * draws the steps whose rules keep tokens beyond the op's candidates ({@link SAMPLE_BEYOND_CANDIDATES}).
 *
 * @module
 */

import {
  SAMPLE_BEYOND_CANDIDATES,
  SAMPLE_CANDIDATE_CAP,
  sampleParams,
  type SampleSettings,
  sampleUniform,
} from "./sample.ts";

/** One reference draw. */
export interface ReferenceDraw {
  /** The token drawn. */
  token: number;
  /** Whether f32 rounding could change the outcome (a boundary lies within the tolerance). */
  fragile: boolean;
  /** The candidates that survived top-k, top-p and min-p, most likely first. */
  kept: Uint32Array;
  /**
   * Whether the rules keep tokens beyond the capped candidates (the op then gives
   * {@link SAMPLE_BEYOND_CANDIDATES}, as `token` does here); never without the cap.
   */
  beyond: boolean;
}

/**
 * Draws a token from `logits` as the GPU op does for draw index `draw`, with `history` the tokens so far
 * (the last `repeatLastN` are penalised). `tolerance` is relative to the total mass. `capped: false` lifts
 * the op's candidate cap: top-k keeps `topK` tokens (all when 0), as the CPU sampler's rules say.
 */
export function sampleReference(
  logits: Float32Array,
  settings: SampleSettings,
  history: readonly number[],
  draw: number,
  tolerance = 1e-5,
  capped = true,
): ReferenceDraw {
  const V = logits.length;
  const p = sampleParams(settings, V);
  if (!capped && settings.temperature > 0) {
    // Top-k keeps its k; top-p's mass is that of the kept candidates (all of them with top-k off).
    p.k = settings.topK > 0 ? Math.min(settings.topK, V) : V;
    p.fullMass = false;
    p.truncated = false;
    p.wholeVocabulary = false;
  }
  const recent = new Set(
    p.penaltyOn ? history.slice(Math.max(0, history.length - settings.repeatLastN)) : [],
  );
  const work = new Float32Array(V);
  for (let i = 0; i < V; i++) {
    let x = logits[i];
    if (recent.has(i)) x = Math.fround(x * (x > 0 ? p.invPenalty : p.penalty));
    work[i] = x === 0 ? 0 : x; // −0 counts as +0
  }
  // The op sums the whole vocabulary in f32, its rounding far below a token's share of the total: a tenth of
  // the tolerance still covers it, and leaves most draws of a flat distribution comparable.
  if (p.wholeVocabulary) {
    return drawWholeVocabulary(work, p.invTemp, sampleUniform(p.seed, draw), tolerance / 10);
  }
  // The k largest values, ties to the lowest id, in that order.
  const k = p.k;
  const ids = rankByValue(work).subarray(0, k);
  const x = new Float64Array(k);
  for (let i = 0; i < k; i++) x[i] = work[ids[i]];
  const x0 = x[0];
  let fragile = false;
  let keep = k;
  let cut = false; // whether top-p or min-p cut among the candidates
  let run = 0;
  if (p.topP < 1) {
    const cum = new Float64Array(k);
    for (let i = 0; i < k; i++) cum[i] = run += Math.exp(Math.fround(x[i] - x0));
    let mass = cum[k - 1];
    if (p.fullMass) {
      mass = 0;
      for (let i = 0; i < V; i++) mass += Math.exp(work[i] - x0);
    }
    const need = p.topP * mass;
    const near = (c: number) => Math.abs(c - need) <= tolerance * mass;
    const first = cum.findIndex((c) => c >= need);
    const at = first < 0 ? k - 1 : first;
    if (first >= 0) {
      keep = first + 1;
      cut = true;
    }
    if (near(cum[at]) || (at > 0 && near(cum[at - 1]))) fragile = true;
  }
  if (p.minPOn) {
    const cutoff = Math.fround(x0 + p.logMinP);
    for (let i = 1; i < k; i++) {
      if (x[i] < cutoff) {
        keep = Math.min(keep, i);
        cut = true;
        break;
      }
    }
  }
  if (p.truncated && !cut) {
    return { token: SAMPLE_BEYOND_CANDIDATES, fragile, kept: ids, beyond: true };
  }
  const weights = new Float64Array(keep);
  run = 0;
  for (let i = 0; i < keep; i++) {
    weights[i] = run += Math.exp(Math.fround(Math.fround(x[i] - x0) * p.invTemp));
  }
  const total = weights[keep - 1];
  const target = sampleUniform(p.seed, draw) * total;
  let pick = weights.findIndex((w) => w > target);
  if (pick < 0) pick = keep - 1;
  const near = (w: number) => Math.abs(w - target) <= tolerance * total;
  if (keep > 1 && (near(weights[pick]) || (pick > 0 && near(weights[pick - 1])))) fragile = true;
  return { token: ids[pick], fragile, kept: ids.subarray(0, keep), beyond: false };
}

/**
 * The op's draw with no cut at all over a vocabulary beyond the cap: every token weighs
 * exp((x − x0) / temperature) (x0 the largest value), and the draw is the first in id order whose running
 * weight exceeds `u` · total (the last token when none does).
 */
function drawWholeVocabulary(
  work: Float32Array,
  invTemp: number,
  u: number,
  tolerance: number,
): ReferenceDraw {
  let x0 = -Infinity;
  for (let i = 0; i < work.length; i++) x0 = Math.max(x0, work[i]);
  const weights = new Float64Array(work.length);
  let run = 0;
  for (let i = 0; i < work.length; i++) {
    weights[i] = run += Math.exp(Math.fround(Math.fround(work[i] - x0) * invTemp));
  }
  const target = u * run;
  let pick = weights.findIndex((w) => w > target);
  if (pick < 0) pick = work.length - 1;
  const near = (w: number) => Math.abs(w - target) <= tolerance * run;
  const fragile = near(weights[pick]) || (pick > 0 && near(weights[pick - 1]));
  return { token: pick, fragile, kept: rankByValue(work), beyond: false };
}

/**
 * The token the GPU sampler's rules draw from `logits` without its candidate cap, for draw index `draw`
 * (the op's random number), `history` the tokens so far: the whole vocabulary ranked on the CPU.
 */
export function sampleExact(
  logits: Float32Array,
  settings: SampleSettings,
  history: readonly number[],
  draw: number,
): number {
  return sampleReference(logits, settings, history, draw, 0, false).token;
}

/**
 * Whether the GPU op draws `settings`' tokens itself over a vocabulary of `vocab`: "always" (its candidates
 * hold every token the rules can keep, or no rule cuts and it weighs the whole vocabulary), "mostly"
 * (unless no top-p or min-p cut falls among its candidates: then it gives {@link SAMPLE_BEYOND_CANDIDATES})
 * or "never" (top-k above the cap but below the vocabulary, whose top-p mass the op cannot measure).
 */
export function deviceDraws(settings: SampleSettings, vocab: number): "always" | "mostly" | "never" {
  const p = sampleParams(settings, vocab);
  if (!p.truncated || p.wholeVocabulary) return "always";
  return settings.topK > SAMPLE_CANDIDATE_CAP && settings.topK < vocab ? "never" : "mostly";
}

/** Token ids ordered by `work` value, descending, ties to the lowest id (the GPU op's order). */
function rankByValue(work: Float32Array): Uint32Array {
  const V = work.length;
  // Inverted order keys (ascending key = descending value), then a stable LSD radix sort by 16-bit
  // digits: ids enter in ascending order, so ties keep it.
  const bits = new Uint32Array(work.buffer, work.byteOffset, V);
  const keys = new Uint32Array(V);
  for (let i = 0; i < V; i++) {
    const b = bits[i];
    keys[i] = (b & 0x80000000) !== 0 ? b : ~b >>> 0 & 0x7fffffff;
  }
  let ids = new Uint32Array(V);
  for (let i = 0; i < V; i++) ids[i] = i;
  let spare = new Uint32Array(V);
  const counts = new Uint32Array(65536);
  for (const shift of [0, 16]) {
    counts.fill(0);
    for (let i = 0; i < V; i++) counts[(keys[ids[i]] >>> shift) & 0xffff]++;
    let sum = 0;
    for (let d = 0; d < 65536; d++) {
      const c = counts[d];
      counts[d] = sum;
      sum += c;
    }
    for (let i = 0; i < V; i++) spare[counts[(keys[ids[i]] >>> shift) & 0xffff]++] = ids[i];
    [ids, spare] = [spare, ids];
  }
  return ids;
}

/**
 * KV admission policies. `full` keeps every token (the plain {@link ./kv_cache.ts} path); the others run
 * through the WG-KV dual cache ({@link ./dual_cache.ts}): a local window of the last `window` tokens
 * (including the current one) is always attended, and a token older than that is attended only if it
 * was admitted when it was written:
 * - `wgkv`: admitted iff the learned write gate scores it `g > threshold` (strict), per KV head; the
 *   threshold is in [0, 1] and, since g ≤ 1, a threshold of 1 admits nothing (a saturated f32 sigmoid
 *   can equal 1.0, which a threshold just below 1 such as 0.999999 would still admit);
 * - `window`: nothing is admitted (sliding-window attention);
 * - `sink`: the first `sinks` positions are admitted (StreamingLLM-style attention sinks);
 * - `random`: each (layer, head, position) is admitted with probability `rate`, decided by a seeded
 *   integer hash that the GPU append kernel and the CPU bookkeeping both evaluate, so no readback is needed
 *   and runs are reproducible.
 *
 * @module
 */

import { BadFlagError } from "../errors.ts";

/** How the KV cache decides which tokens outlive the local window. `G` is the gate weights' type. */
export type KvPolicy<G = unknown> =
  | { kind: "full" }
  | { kind: "wgkv"; window: number; threshold: number; gate: G }
  | { kind: "window"; window: number }
  | { kind: "sink"; window: number; sinks: number }
  | { kind: "random"; window: number; rate: number; seed: number };

/** A policy that uses the dual cache (every kind but `full`). */
export type WindowedPolicy<G = unknown> = Exclude<KvPolicy<G>, { kind: "full" }>;

/** Policy codes of the `policy` override constant of `wgsl/wgkv_append.wgsl`. */
export const POLICY_CODE = { wgkv: 0, window: 1, sink: 2, random: 3 } as const;

/** Resolution of the random policy's rate: admitted iff `hash >> 8 < round(rate · 2^24)`. */
const RATE_BITS = 24;

/**
 * Checks a windowed policy's numbers, throwing a {@link BadFlagError} that names the bad one. A `wgkv`
 * threshold is in [0, 1]: 1 admits nothing.
 */
export function checkPolicy(policy: WindowedPolicy): void {
  const bad = (what: string, v: unknown) =>
    new BadFlagError(`KV policy ${policy.kind}: ${what} is out of range (${v})`);
  if (!Number.isInteger(policy.window) || policy.window < 1 || policy.window > 2 ** 20) {
    throw bad("window (whole number of tokens ≥ 1)", policy.window);
  }
  if (policy.kind === "wgkv" && !(policy.threshold >= 0 && policy.threshold <= 1)) {
    throw bad("threshold (in [0, 1]; 1 admits nothing)", policy.threshold);
  }
  if (policy.kind === "sink" && !(Number.isInteger(policy.sinks) && policy.sinks >= 0)) {
    throw bad("sinks (whole number ≥ 0)", policy.sinks);
  }
  if (policy.kind === "random") {
    if (!(policy.rate >= 0 && policy.rate <= 1)) throw bad("rate (in [0, 1])", policy.rate);
    if (!(Number.isInteger(policy.seed) && policy.seed >= 0 && policy.seed < 2 ** 32)) {
      throw bad("seed (u32)", policy.seed);
    }
  }
}

/** The random policy's threshold on the top 24 bits of the hash. */
export function randomRateThreshold(rate: number): number {
  return Math.round(rate * 2 ** RATE_BITS);
}

/**
 * The override constants of `wgsl/admission_rule.wgsl` for `policy` (the kernels that store tokens into a
 * dual cache's ring decide the rule policies' admissions with them).
 */
export function admissionRuleConstants(policy: WindowedPolicy): Record<string, number> {
  return {
    policy: POLICY_CODE[policy.kind],
    sinks: policy.kind === "sink" ? Math.min(policy.sinks, 2 ** 32 - 1) : 0,
    seed: policy.kind === "random" ? policy.seed : 0,
    rate_threshold: policy.kind === "random" ? randomRateThreshold(policy.rate) : 0,
  };
}

/** A 32-bit integer mixer (xor-shift-multiply), identical to `mix32` in `wgsl/wgkv_append.wgsl`. */
export function mix32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

/** The random policy's hash of (seed, layer, KV head, position). */
export function admissionHash(seed: number, layer: number, head: number, position: number): number {
  return mix32((mix32((mix32((mix32(seed) ^ layer) >>> 0) ^ head) >>> 0) ^ position) >>> 0);
}

/**
 * Whether a non-gate policy admits the token at `position` of (layer, head); `undefined` for `wgkv`
 * (the gate decides on the GPU and the flags are read back).
 */
export function admitsByRule(
  policy: WindowedPolicy,
  layer: number,
  head: number,
  position: number,
): boolean | undefined {
  switch (policy.kind) {
    case "wgkv":
      return undefined;
    case "window":
      return false;
    case "sink":
      return position < policy.sinks;
    case "random":
      return admissionHash(policy.seed, layer, head, position) >>> 8 < randomRateThreshold(policy.rate);
  }
}

/**
 * The KV cache a model allocates for one sequence under a policy: the full cache's or the dual cache's
 * options and its pool size, checked against the GPU's binding limits before the weights are uploaded.
 *
 * @module
 */

import { BadFlagError } from "../errors.ts";
import { type KvCacheOptions, poolPages } from "../kv/kv_cache.ts";
import { type DualCacheOptions, ringTokensFor } from "../kv/dual_cache.ts";
import type { KvPolicy } from "../kv/wgkv_policy.ts";
import { pagesForTokens } from "../kv/page_pool.ts";
import type { GateWeights } from "../gate/format.ts";
import type { LlamaHParams } from "./hparams.ts";
/** How a model's KV cache is laid out: the full cache's or the dual cache's options, and its pool pages. */
export type KvCacheLayout =
  | { kind: "full"; options: KvCacheOptions; pages: number }
  | { kind: "dual"; options: DualCacheOptions; pages: number };

/**
 * The KV cache {@link GpuModel.load} allocates for one sequence of up to `ctx` tokens under `policy`, with
 * prefill steps of up to `maxBatch` tokens: the full cache (every token, in pages), or the dual cache (a ring
 * of the window and a step per (layer, KV head), and a pool share of `globalFraction` of a full cache for the
 * admitted tokens; default: the policy's own, see `defaultGlobalFraction`). `pages` is the pool's size in
 * pages (each `pageBytes(headDim)` bytes).
 */
export function kvCacheLayout(
  hp: LlamaHParams,
  policy: KvPolicy<GateWeights>,
  ctx: number,
  maxBatch: number,
  globalFraction?: number,
  globalPageRun?: number,
): KvCacheLayout {
  const shape = { layers: hp.nLayer, kvHeads: hp.nHeadKV, headDim: hp.headDim };
  if (policy.kind === "full") {
    const options: KvCacheOptions = { ...shape, maxTokensPerHead: ctx };
    return { kind: "full", options, pages: poolPages(options) };
  }
  const fraction = globalFraction ?? defaultGlobalFraction(policy, ctx);
  if (!(fraction >= 0 && fraction <= 1)) {
    throw new BadFlagError(`--kv-global: ${fraction} is not a fraction in [0, 1]`);
  }
  // The pool holds `fraction` of a full cache's global pages in all, shared by the heads: one head may keep
  // up to the whole context (WG-KV heads admit very different shares, 0–97% with a random gate) as long as
  // the others leave it the pages. Only the block tables are sized per head for all of it.
  const globalPagesPerHead = pagesForTokens(Math.max(16, Math.ceil(fraction * ctx)));
  const ringPages = pagesForTokens(ringTokensFor(policy.window, maxBatch));
  const pages = hp.nLayer * hp.nHeadKV * (ringPages + globalPagesPerHead);
  const options: DualCacheOptions = {
    ...shape,
    policy,
    maxBatch,
    maxGlobalTokens: ctx,
    pages,
    globalPageRun,
  };
  return { kind: "dual", options, pages };
}

/** Default share of a full cache reserved for admitted tokens beyond the window. */
function defaultGlobalFraction(
  policy: Exclude<KvPolicy<GateWeights>, { kind: "full" }>,
  ctx: number,
): number {
  switch (policy.kind) {
    case "window":
      return 0;
    case "sink":
      return Math.min(1, policy.sinks / ctx);
    case "random":
      return Math.min(1, policy.rate * 1.1 + 0.01);
    case "wgkv":
      return 0.5;
  }
}

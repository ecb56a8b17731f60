/**
 * The decode KV append folded into the fused QKV matvec (`createQkvMatvec`'s `append` option): the `qkv`
 * entry of `wgsl/matvec_fast.wgsl`, built with `kv_append = 1` and `wgsl/qkv_kv_store.wgsl` spliced in at
 * its `KV_STORE` text define, stores the K and V rows it computes into the f16 pages of the paged KV cache
 * exactly as `createKvAppend` (`./kv_append.ts`) would from the f32 rows, saving that dispatch per layer.
 *
 * With a WG-KV dual cache (a {@link DualKvView}) the rows go into the layer's local ring instead
 * (`wgsl/qkv_ring_store.wgsl`), each slot's position recorded as not admitted yet: what the write gate's
 * ring append does, for the decode steps whose gates decide all layers' flags after the last layer
 * (`createWriteGateLayers` in `./write_gate_layers.ts`).
 *
 * The pool shards, block table and lengths (slot info for the ring) are storage bindings on top of the QKV
 * kernel's own, so the fusion applies only where they fit the stage's limit: {@link qkvKvAppendBlocker}
 * says when they do not (callers then keep the separate append).
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import type { GpuWeight } from "../weights.ts";
import { includeShaders, loadShader } from "../shader.ts";
import { admissionRuleConstants } from "../../kv/wgkv_policy.ts";
import {
  layerUniform,
  pagedKvConstants,
  type PagedKvView,
  poolShaderSource,
  shardEntries,
} from "../../kv/paged_view.ts";
import type { DualKvView } from "../../kv/dual_cache.ts";
import type { BufferSlice } from "./op.ts";

/** Where `createQkvMatvec`'s K and V rows also go: one layer of a paged KV cache or of a dual cache's ring. */
export interface QkvKvAppend {
  /**
   * The cache. A paged (full) cache's lengths must already count the step's tokens, as for
   * `createKvAppend`; a WG-KV dual cache's step must have begun (`DualCache.beginStep`), and its ring then
   * takes the rows at slot `position % ringTokens`, as the write gate's ring append would.
   */
  kv: PagedKvView | DualKvView;
  /** Layer of the cache the op writes. */
  layer: number;
}

/**
 * Storage buffers the `qkv` entry binds without the KV store: the three weights, x, q, k, v, the RoPE
 * turns, k_pre and the folded norm's sums (the last three are dummies when unused, but always bound).
 */
export const QKV_STORAGE_BINDINGS = 10;

/**
 * The `KV_STORE` define of `wgsl/matvec_fast.wgsl` when the `qkv` entry stores nothing: the two functions
 * the entry calls (only under `kv_append = 1`), without bindings.
 */
export const NO_KV_STORE = [
  "// No KV store (kv_append = 0): stubs of wgsl/qkv_kv_store.wgsl's functions, no bindings.",
  "fn kv_locate(weight: u32, token: u32, row: u32) -> vec2u { return vec2u(0u); }",
  "fn kv_store(at: vec2u, lo: f32, hi: f32) {}",
].join("\n");

/** The one limit {@link qkvKvAppendBlocker} looks at (a subset of `GPUSupportedLimits`). */
export interface QkvKvAppendLimits {
  /** Storage buffers one shader stage may bind. */
  readonly maxStorageBuffersPerShaderStage: number;
}

/**
 * Why the fused QKV of `wk`, `wv` cannot also append to `kv` on a GPU with `limits` (a one-line reason),
 * or undefined when it can: K and V must be whole heads of the cache, and the block table, lengths and pool
 * shards must fit the storage bindings next to the kernel's own.
 */
export function qkvKvAppendBlocker(
  limits: QkvKvAppendLimits,
  kv: PagedKvView,
  wk: GpuWeight,
  wv: GpuWeight,
): string | undefined {
  const kvRows = kv.kvHeads * kv.headDim;
  for (const w of [wk, wv]) {
    if (w.rows !== kvRows) {
      return `${w.name} has ${w.rows} rows, the KV cache ${kv.kvHeads} heads × ${kv.headDim} = ${kvRows}`;
    }
  }
  const needed = QKV_STORAGE_BINDINGS + 2 + kv.shards.length;
  if (needed > limits.maxStorageBuffersPerShaderStage) {
    return `QKV with the KV append binds ${needed} storage buffers (${kv.shards.length} pool shards), ` +
      `this GPU allows ${limits.maxStorageBuffersPerShaderStage}`;
  }
  return undefined;
}

/** What `createQkvMatvec` adds to its kernel and bind group to store K and V into the cache. */
export interface QkvKvStoreParts {
  /** Override constants: `kv_append` and the cache's sizes (`head_dim` among them). */
  constants: Record<string, number>;
  /** The `KV_STORE` define. */
  source: string;
  /** (binding, buffer) pairs from binding 14 on. */
  entries: [number, BufferSlice][];
}

/**
 * The kernel constants, `KV_STORE` source and bindings that make the `qkv` entry store into layer
 * `append.layer` of `append.kv` (checked by the caller: {@link qkvKvAppendBlocker} and the layer range).
 * Without `append`: the stub and no bindings.
 */
export function qkvKvStoreParts(gpu: Gpu, label: string, append?: QkvKvAppend): QkvKvStoreParts {
  if (!append) return { constants: {}, source: NO_KV_STORE, entries: [] };
  const { kv, layer } = append;
  const pool = poolShaderSource(kv.shards.length, true);
  if (isDualView(kv)) {
    return {
      constants: {
        kv_append: 1,
        ...pagedKvConstants(kv),
        ring_tokens: kv.ringTokens,
        ...admissionRuleConstants(kv.policy),
      },
      source: includeShaders(loadShader("qkv_ring_store")).replace("{{POOL}}", pool),
      entries: [
        [14, kv.sequence],
        [15, layerUniform(gpu, label, layer)],
        [16, kv.blockTable],
        [17, kv.slotInfo],
        ...shardEntries(kv),
      ],
    };
  }
  return {
    constants: { kv_append: 1, ...pagedKvConstants(kv) },
    source: loadShader("qkv_kv_store").replace("{{POOL}}", pool),
    entries: [
      [14, kv.sequence],
      [15, layerUniform(gpu, label, layer)],
      [16, kv.blockTable],
      [17, kv.lengths],
      ...shardEntries(kv),
    ],
  };
}

/** Whether `kv` is a WG-KV dual cache (its K and V go to the ring by position). */
function isDualView(kv: PagedKvView | DualKvView): kv is DualKvView {
  return "slotInfo" in kv;
}

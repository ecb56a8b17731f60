/**
 * The WG-KV append folded into the write gate (`createWriteGate`'s `append` option): the `finish` entry of
 * `wgsl/write_gate.wgsl`, built with `ring_append = 1` and `wgsl/write_gate_append.wgsl` spliced in at its
 * `RING_APPEND` text define, stores each step token's key (after RoPE, the gate's `postK`) and value into
 * its ring slot of the dual cache with the slot's position and admission flag, exactly as
 * `createWgkvAppend` (`./wgkv_append.ts`) would with the gate's flags, saving that dispatch per layer.
 *
 * The values, block table, slot info and pool shards are storage bindings on top of the gate's own, so the
 * fusion applies only where they fit the stage's limit: {@link writeGateAppendBlocker} says when they do
 * not (callers then keep the separate append).
 *
 * @module
 */

import { loadShader } from "../shader.ts";
import type { DualKvView } from "../../kv/dual_cache.ts";
import { poolShaderSource, shardEntries } from "../../kv/paged_view.ts";
import type { BufferSlice } from "./op.ts";

/** Where `createWriteGate` also appends the step's keys and values: the gated layer of a dual cache. */
export interface WriteGateAppend {
  /**
   * The dual cache (policy `wgkv`, the gate's layers, KV heads and head size); `DualCache.beginStep` must
   * have been called for the step, as for `createWgkvAppend`.
   */
  kv: DualKvView;
  /** The step's values, f32 `[maxTokens][kvHeads · headDim]` (the keys are the gate's `postK`). */
  v: BufferSlice;
}

/**
 * Storage buffers `finish` binds with the ring append, besides the pool shards: params, scores, flags,
 * partial logits and the keys after RoPE of the gate, then the values, block table and slot info.
 */
export const WRITE_GATE_APPEND_STORAGE_BINDINGS = 8;

/**
 * Storage buffers `main` binds in a decode chain of gates (`WriteGateOptions.chain`), besides the pool
 * shards: those of {@link WRITE_GATE_APPEND_STORAGE_BINDINGS}, the keys before RoPE and the previous
 * layer's params.
 */
export const WRITE_GATE_CHAIN_STORAGE_BINDINGS = 10;

/**
 * The `RING_APPEND` define of `wgsl/write_gate.wgsl` when `finish` appends nothing: the two functions it
 * calls (only under `ring_append = 1`), without bindings.
 */
export const NO_RING_APPEND = [
  "// No ring append (ring_append = 0): stubs of wgsl/write_gate_append.wgsl's functions, no bindings.",
  "fn ring_record(token: u32, head: u32, layer: u32, admitted: bool) {}",
  "fn ring_copy(token: u32, head: u32, lane: u32, threads: u32) {}",
  "fn previous_b2(head: u32) -> f32 { return 0.0; }",
].join("\n");

/** The one limit {@link writeGateAppendBlocker} looks at (a subset of `GPUSupportedLimits`). */
export interface WriteGateAppendLimits {
  /** Storage buffers one shader stage may bind. */
  readonly maxStorageBuffersPerShaderStage: number;
}

/**
 * Why the write gate cannot also append to `kv` on a GPU with `limits` (a one-line reason), or undefined
 * when it can: the gate's own storage bindings, the values, block table, slot info and pool shards must fit
 * the stage's limit; in a decode chain (`chained`), also the keys before RoPE and the previous layer's
 * weights.
 */
export function writeGateAppendBlocker(
  limits: WriteGateAppendLimits,
  kv: DualKvView,
  chained = false,
): string | undefined {
  const own = chained ? WRITE_GATE_CHAIN_STORAGE_BINDINGS : WRITE_GATE_APPEND_STORAGE_BINDINGS;
  const needed = own + kv.shards.length;
  if (needed > limits.maxStorageBuffersPerShaderStage) {
    return `the write gate with the WG-KV append${chained ? " in a chain" : ""} binds ${needed} storage ` +
      `buffers (${kv.shards.length} pool shards), this GPU allows ${limits.maxStorageBuffersPerShaderStage}`;
  }
  return undefined;
}

/** What `createWriteGate` adds to its `finish` kernel and bind group to append to the ring. */
export interface WriteGateAppendParts {
  /** Override constants: `ring_append` and the cache's page-table sizes. */
  constants: Record<string, number>;
  /** The `RING_APPEND` define. */
  source: string;
  /** (binding, buffer) pairs from binding 8 on. */
  entries: [number, BufferSlice][];
}

/**
 * The kernel constants, `RING_APPEND` source and bindings that make `finish` append to `append.kv` (checked
 * by the caller: {@link writeGateAppendBlocker}, the policy and the shapes). Without `append`: the stub and
 * no bindings.
 */
export function writeGateAppendParts(append?: WriteGateAppend): WriteGateAppendParts {
  if (!append) return { constants: {}, source: NO_RING_APPEND, entries: [] };
  const { kv, v } = append;
  const pool = poolShaderSource(kv.shards.length, true);
  return {
    constants: {
      ring_append: 1,
      max_pages: kv.maxPagesPerHead,
      pool_pages_per_shard: kv.pagesPerShard,
      ring_tokens: kv.ringTokens,
    },
    source: loadShader("write_gate_append").replace("{{POOL}}", pool),
    entries: [
      [8, kv.sequence],
      [9, v],
      [10, kv.blockTable],
      [11, kv.slotInfo],
      ...shardEntries(kv),
    ],
  };
}

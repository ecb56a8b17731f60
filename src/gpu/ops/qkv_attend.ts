/**
 * The attention tail of the fused decode QKV (`wgsl/qkv_attend.wgsl`): with the KV store, the workgroup
 * that finishes a KV head's last Q, K or V rows also attends for that head over its whole row of the
 * cache, so a decode step over short rows needs no attention dispatch. `createQkvMatvec` (`./fused.ts`)
 * takes it as its `attend` option and uses it while the query's row holds at most `maxKeys` keys; the
 * decode attention op (`createFlashDecode`'s `attendedUpTo`) then records nothing.
 *
 * @module
 */

import { includeShaders, loadShader } from "../shader.ts";
import { type PagedKvView, poolShardSwitch } from "../../kv/paged_view.ts";
import type { BufferSlice } from "./op.ts";
import { qkvKvStoreBindings } from "./qkv_kv_store.ts";
import { decodeAttendWorkgroupBytes } from "./attention.ts";

/** What `createQkvMatvec` needs to attend for the step's token (see the module comment). */
export interface QkvAttend {
  /** The attention output, f32 `[qHeads · headDim]`. */
  out: BufferSlice;
  /**
   * Arrival counters, u32 `[kvHeads]`, zero; the kernel leaves them at zero, so the ops of all layers (and
   * the decode attention's fused merge) may share one buffer.
   */
  arrivals: BufferSlice;
  /**
   * The tail attends while the query's position + 1 (its row's keys) is at most this and at most
   * {@link qkvAttendMaxKeys}; 0 never.
   */
  maxKeys: number;
}

/**
 * Steps per tile of the tail's attention: keys per tile are 8 × its key lanes, which are few (a decode QKV
 * workgroup has 64 threads by default).
 */
const TAIL_TILE_STEPS = 8;

/**
 * The tail attends over rows of at most this many tiles: one workgroup per KV head walks them one after
 * another, where the attention dispatch spreads longer rows over more workgroups.
 */
export const QKV_ATTEND_MAX_TILES = 4;

/**
 * Most keys a row may hold for the tail of a fused QKV with `workgroupSize` threads over a cache of
 * `headDim` ({@link QKV_ATTEND_MAX_TILES} tiles).
 */
export function qkvAttendMaxKeys(headDim: number, workgroupSize: number): number {
  return QKV_ATTEND_MAX_TILES * TAIL_TILE_STEPS * (workgroupSize / (headDim / 8));
}

/** The limits {@link qkvAttendBlocker} looks at (a subset of `GPUSupportedLimits`). */
export interface QkvAttendLimits {
  /** Storage buffers one shader stage may bind. */
  readonly maxStorageBuffersPerShaderStage: number;
  /** Bytes of workgroup memory a kernel may use. */
  readonly maxComputeWorkgroupStorageSize: number;
}

/** The fused QKV's shape as the tail depends on it. */
export interface QkvAttendShape {
  /** Q rows (query heads × head_dim). */
  qRows: number;
  /** Threads per workgroup of the fused QKV. */
  workgroupSize: number;
  /** Rows per workgroup of the fused QKV. */
  rowsPerWorkgroup: number;
  /** Tokens per workgroup (the tail needs 1: decode). */
  tokensPerWorkgroup: number;
  /** Workgroup memory the fused QKV uses without the tail. */
  workgroupBytes: number;
}

/** Workgroup memory of the tail (decode_attend's arrays, two u32). */
export function qkvAttendWorkgroupBytes(headDim: number, workgroupSize: number): number {
  return decodeAttendWorkgroupBytes(headDim, workgroupSize / (headDim / 8), TAIL_TILE_STEPS) + 8;
}

/**
 * Why the fused QKV of `shape` cannot take the attention tail over `kv` on a GPU with `limits`, or
 * undefined when it can: head_dim a multiple of 8 up to 256 that the workgroup's threads divide into whole
 * key lanes, row groups that never straddle two heads, one token per workgroup, the storage bindings and
 * the workgroup memory.
 */
export function qkvAttendBlocker(
  limits: QkvAttendLimits,
  kv: PagedKvView,
  shape: QkvAttendShape,
): string | undefined {
  const D = kv.headDim;
  if (D % 8 !== 0 || D > 256) return `head_dim ${D} is not a multiple of 8 up to 256`;
  const quads = D / 8;
  if (shape.workgroupSize % quads !== 0) {
    return `${shape.workgroupSize} threads are not whole key lanes of ${quads} threads`;
  }
  const qRowsPerHead = shape.qRows / kv.kvHeads;
  if (!Number.isInteger(qRowsPerHead) || qRowsPerHead % D !== 0) {
    return `${shape.qRows} Q rows are not whole GQA groups of ${kv.kvHeads} KV heads`;
  }
  if (D % shape.rowsPerWorkgroup !== 0) {
    return `${shape.rowsPerWorkgroup} rows per workgroup do not divide head_dim ${D}`;
  }
  if (shape.tokensPerWorkgroup !== 1) return `it attends for one token per workgroup`;
  const needed = qkvKvStoreBindings(kv) + 2;
  if (needed > limits.maxStorageBuffersPerShaderStage) {
    return `QKV with the attention binds ${needed} storage buffers (${kv.shards.length} pool shards), ` +
      `this GPU allows ${limits.maxStorageBuffersPerShaderStage}`;
  }
  const bytes = shape.workgroupBytes + qkvAttendWorkgroupBytes(D, shape.workgroupSize);
  if (bytes > limits.maxComputeWorkgroupStorageSize) {
    return `QKV with the attention needs ${bytes} bytes of workgroup memory, this GPU allows ` +
      `${limits.maxComputeWorkgroupStorageSize}`;
  }
  return undefined;
}

/** What `createQkvMatvec` adds to its kernel and bind group for the tail. */
export interface QkvAttendParts {
  /** Override constants (`attend` = 1 and the tail's). */
  constants: Record<string, number>;
  /** The `ATTEND` define. */
  source: string;
  /** (binding, buffer) pairs 18 and 19. */
  entries: [number, BufferSlice][];
}

/** The `ATTEND` define of a fused QKV without the tail: a stub of its one function. */
export const NO_ATTEND =
  "// No attention tail (attend = 0).\nfn attend_after_group(weight: u32, row0: u32, tid: u32) {}";

/** The kernel parts of the tail (check {@link qkvAttendBlocker} first). */
export function qkvAttendParts(attend: QkvAttend, kv: PagedKvView, workgroupSize: number): QkvAttendParts {
  const quads = kv.headDim / 8;
  // The fused QKV binds the pool shards as u32 words (its KV store writes single words).
  const loads = poolShardSwitch(kv.shards.length, "page", "", (shard) => [
    `let w = 4u * at;`,
    `k_words[u] = vec4u(${shard}[w], ${shard}[w + 1u], ${shard}[w + 2u], ${shard}[w + 3u]);`,
    `let wv = w + PAGE_TOKENS * head_dim / 2u;`,
    `v_words[u] = vec4u(${shard}[wv], ${shard}[wv + 1u], ${shard}[wv + 2u], ${shard}[wv + 3u]);`,
  ]).join("\n");
  const core = includeShaders(loadShader("decode_attend")).replace("{{LOAD_QUADS}}", loads);
  return {
    constants: {
      attend: 1,
      k_quads: quads,
      key_lanes: workgroupSize / quads,
      tile_steps: TAIL_TILE_STEPS,
      attend_scale: 1 / Math.sqrt(kv.headDim),
    },
    source: loadShader("qkv_attend").replace("{{DECODE_ATTEND}}", core),
    entries: [[18, attend.out], [19, attend.arrivals]],
  };
}

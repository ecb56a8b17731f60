/**
 * Decode attention folded into the fused QKV matvec (`createQkvMatvec`'s `attention` option) for short rows
 * of the full cache: the `qkv` entry of `wgsl/matvec_fast.wgsl`, built with `fuse_attention = 1` and
 * `wgsl/qkv_attention.wgsl` (with `wgsl/decode_attend.wgsl`) spliced in at its `QKV_ATTENTION` text define,
 * counts each row group it writes for its KV head, and the workgroup that completes a head (its query heads'
 * Q rows and its K and V rows, stored into the cache) attends that head's query heads over the row. A step
 * whose row holds at most {@link QkvAttention.maxKeys} keys then takes one dispatch for QKV, RoPE, the KV
 * append and attention; longer rows keep the attention op of their own (`createFlashDecode`).
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import { includeShaders, loadShader } from "../shader.ts";
import type { PagedKvView } from "../../kv/paged_view.ts";
import { type BufferSlice, checkSlice } from "./op.ts";

/** The attention the fused QKV takes on for short rows (one token per step, the full cache). */
export interface QkvAttention {
  /** Query heads (a multiple of the cache's KV heads). */
  qHeads: number;
  /** The attention output, f32 `[qHeads · headDim]`. */
  out: BufferSlice;
  /** Arrival counters, u32 `[kvHeads]`, zero (the op leaves them zero after each dispatch). */
  arrivals: BufferSlice;
  /** Steps whose row holds at most this many keys (the position + 1) attend in the QKV dispatch. */
  maxKeys: number;
  /** Score scale (default 1 / sqrt(head_dim)). */
  scale?: number;
}

/** The `QKV_ATTENTION` define of `wgsl/matvec_fast.wgsl` without the fusion: a stub, no bindings. */
export const NO_QKV_ATTENTION =
  "// No fused attention (fuse_attention = 0): a stub of wgsl/qkv_attention.wgsl's function, no bindings.\n" +
  "fn qkv_attention_arrive(weight: u32, row0: u32, tid: u32) {}";

/** Steps per key tile of the fused attention (keys per tile = steps · key lanes). */
const TILE_STEPS = 4;

/** Storage buffers the fused attention adds to the QKV kernel with its KV store. */
export const QKV_ATTENTION_STORAGE_BINDINGS = 2;

/**
 * Workgroup memory of decode_attend's arrays for `keyLanes` lanes of head_dim / 8 threads and tiles of
 * {@link TILE_STEPS} steps (exchange, tile_scores, lane_stats, query_tile, and attn_last).
 */
export function qkvAttentionWorkgroupBytes(headDim: number, keyLanes: number): number {
  const quads = headDim / 8, tileKeys = TILE_STEPS * keyLanes;
  const exchange = Math.max(tileKeys * (quads + 1), Math.ceil(keyLanes / 2) * quads * 10, keyLanes * quads);
  return (exchange + tileKeys + 2 * keyLanes + 1) * 16 + 4;
}

/**
 * Why the QKV kernel of `workgroupSize` threads, already using `matvecBytes` of workgroup memory, cannot
 * also attend over `kv` for `qHeads` query heads (a one-line reason), or undefined when it can.
 */
export function qkvAttentionBlocker(
  gpu: Gpu,
  kv: PagedKvView,
  qHeads: number,
  workgroupSize: number,
  matvecBytes: number,
): string | undefined {
  const quads = kv.headDim / 8;
  if (kv.headDim % 8 !== 0 || kv.headDim > 256) {
    return `head_dim ${kv.headDim} is not a multiple of 8 up to 256`;
  }
  if (qHeads % kv.kvHeads !== 0) return `${qHeads} query heads are not a multiple of ${kv.kvHeads} KV heads`;
  if (workgroupSize % quads !== 0 || workgroupSize / quads < 2) {
    return `a workgroup of ${workgroupSize} threads is not two or more key lanes of ${quads}`;
  }
  const bytes = matvecBytes + qkvAttentionWorkgroupBytes(kv.headDim, workgroupSize / quads);
  if (bytes > gpu.limits.maxComputeWorkgroupStorageSize) {
    return `it needs ${bytes} bytes of workgroup memory, this GPU allows ${gpu.limits.maxComputeWorkgroupStorageSize}`;
  }
  return undefined;
}

/**
 * WGSL statements for decode_attend's LOAD_QUADS over the KV store's pool shards (`array<u32>`, bindings
 * of `wgsl/qkv_kv_store.wgsl`): quad `at` of the shard is words 4 · at … 4 · at + 3, the V quad half a page
 * further; with several shards the page's shard is chosen once around both loads.
 */
function wordQuadLoadSource(shardCount: number): string {
  const quad = (shard: string, word: string) =>
    `vec4u(${shard}[${word}], ${shard}[${word} + 1u], ${shard}[${word} + 2u], ${shard}[${word} + 3u])`;
  const load = (shard: string) => [
    `k_words[u] = ${quad(shard, "4u * at")};`,
    `v_words[u] = ${quad(shard, "4u * (at + PAGE_TOKENS * head_dim / 8u)")};`,
  ];
  if (shardCount === 1) return load("pool_shard_0").join("\n");
  const out = ["switch (page / pool_pages_per_shard) {"];
  for (let s = 0; s < shardCount; s++) {
    out.push(
      `  ${s === shardCount - 1 ? "default" : `case ${s}u`}: {`,
      ...load(`pool_shard_${s}`).map((l) => `    ${l}`),
      "  }",
    );
  }
  out.push("}");
  return out.join("\n");
}

/** What `createQkvMatvec` adds to its fused-attention kernel and bind group. */
export interface QkvAttentionParts {
  /** Override constants: `fuse_attention` and the attention's shape. */
  constants: Record<string, number>;
  /** The `QKV_ATTENTION` define. */
  source: string;
  /** (binding, buffer) pairs 18 and 19. */
  entries: [number, BufferSlice][];
}

/**
 * The constants, `QKV_ATTENTION` source and bindings of the fused attention over `kv` for a QKV kernel of
 * `workgroupSize` threads (checked by the caller with {@link qkvAttentionBlocker}).
 */
export function qkvAttentionParts(
  label: string,
  kv: PagedKvView,
  workgroupSize: number,
  attention: QkvAttention,
): QkvAttentionParts {
  const D = kv.headDim;
  checkSlice(label, "attention.out", attention.out, attention.qHeads * D * 4);
  checkSlice(label, "attention.arrivals", attention.arrivals, kv.kvHeads * 4);
  const source = includeShaders(loadShader("qkv_attention") + "\n// #include decode_attend\n")
    .replaceAll("{{LOAD_QUADS}}", wordQuadLoadSource(kv.shards.length))
    .replaceAll("{{SHUFFLE}}", loadShader("shuffle_xor_none"));
  return {
    constants: {
      fuse_attention: 1,
      attn_q_heads: attention.qHeads,
      attn_scale: attention.scale ?? 1 / Math.sqrt(D),
      k_quads: D / 8,
      key_lanes: workgroupSize / (D / 8),
      tile_steps: TILE_STEPS,
    },
    source,
    entries: [[18, attention.out], [19, attention.arrivals]],
  };
}

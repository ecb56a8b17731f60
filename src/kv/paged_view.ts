/**
 * What a kernel needs to read or write the paged KV cache, and the WGSL that reaches a page through the
 * pool shards. {@link PagedKvView} is implemented by {@link ./kv_cache.ts}'s `KvCache`; kernels take the
 * view, never the cache, so they depend on buffers and sizes only.
 *
 * @module
 */

import type { Gpu } from "../gpu/device.ts";
import { PAGE_TOKENS } from "./page_pool.ts";

/** Sizes and GPU buffers of a paged KV cache as kernels see them. */
export interface PagedKvView {
  /** Values per head. */
  readonly headDim: number;
  /** Decoder layers. */
  readonly layers: number;
  /** KV heads per layer. */
  readonly kvHeads: number;
  /** Sequence slots. */
  readonly seqSlots: number;
  /** Entries per block-table row. */
  readonly maxPagesPerHead: number;
  /** Pages per pool shard. */
  readonly pagesPerShard: number;
  /** The pool shard buffers (see `PoolStorage`). */
  readonly shards: readonly GPUBuffer[];
  /** `u32 [seqSlots][layers][kvHeads][maxPagesPerHead]` page ids. */
  readonly blockTable: GPUBuffer;
  /** `u32 [seqSlots][layers][kvHeads]` tokens per row, including the tokens of the current step. */
  readonly lengths: GPUBuffer;
  /** Uniform `{ slot: u32 }`: the sequence the kernels of this step work on. */
  readonly sequence: GPUBuffer;
}

/**
 * Override constants every paged-KV kernel declares (head_dim, kv_heads, layers, max_pages,
 * pool_pages_per_shard).
 */
export function pagedKvConstants(view: PagedKvView): Record<string, number> {
  return {
    head_dim: view.headDim,
    kv_heads: view.kvHeads,
    layers: view.layers,
    max_pages: view.maxPagesPerHead,
    pool_pages_per_shard: view.pagesPerShard,
  };
}

/**
 * Binding number of pool shard 0 in every kernel that reads or writes the pool (shard s at
 * `POOL_FIRST_BINDING + s`): above all other bindings, so the number of shards can grow without
 * renumbering the kernels' own bindings.
 */
export const POOL_FIRST_BINDING = 32;

/**
 * WGSL declaring the pool shards at bindings {@link POOL_FIRST_BINDING} … and the accessors `pool_load(page, word)`
 * (and `pool_store(page, word, value)` when `writable`), where `word` counts u32 words inside the page.
 * This is generated because the number of bindings cannot be an `override`.
 */
export function poolShaderSource(shardCount: number, writable: boolean): string {
  const firstBinding = POOL_FIRST_BINDING;
  const access = writable ? "read_write" : "read";
  const lines = [
    `// Pool shards: binding ${firstBinding}+s = shard s, u32[pool_pages_per_shard][PAGE_WORDS];`,
    `// page p lives in shard p / pool_pages_per_shard. Page = K[${PAGE_TOKENS}][head_dim/2] then V[${PAGE_TOKENS}][head_dim/2].`,
  ];
  for (let s = 0; s < shardCount; s++) {
    lines.push(
      `@group(0) @binding(${firstBinding + s}) var<storage, ${access}> pool_shard_${s}: array<u32>;`,
    );
  }
  const index = "(page % pool_pages_per_shard) * (PAGE_TOKENS * head_dim) + word";
  const shard = "page / pool_pages_per_shard";
  const cases = (body: (s: number) => string) =>
    Array.from(
      { length: shardCount },
      (_, s) => s === shardCount - 1 ? `    default: { ${body(s)} }` : `    case ${s}u: { ${body(s)} }`,
    )
      .join("\n");
  lines.push(
    `fn pool_load(page: u32, word: u32) -> u32 {`,
    `  let i = ${index};`,
    `  switch (${shard}) {`,
    cases((s) => `return pool_shard_${s}[i];`),
    `  }`,
    `}`,
  );
  if (writable) {
    lines.push(
      `fn pool_store(page: u32, word: u32, value: u32) {`,
      `  let i = ${index};`,
      `  switch (${shard}) {`,
      cases((s) => `pool_shard_${s}[i] = value;`),
      `  }`,
      `}`,
    );
  }
  return lines.join("\n");
}

/** A 16-byte uniform `{ layer: u32 }` that fixes which layer of the cache an op works on. */
export function layerUniform(gpu: Gpu, label: string, layer: number): GPUBuffer {
  return gpu.uniform(`${label} layer`, new Uint32Array([layer, 0, 0, 0]));
}

/** The (binding, shard) pairs of the pool shards, from {@link POOL_FIRST_BINDING} on. */
export function shardEntries(view: PagedKvView): [number, GPUBuffer][] {
  return view.shards.map((b, s) => [POOL_FIRST_BINDING + s, b]);
}

/**
 * Attention over the paged KV cache on the GPU: flash-attention prefill (`wgsl/flash_prefill.wgsl`) for a
 * batch of new tokens, and split-K flash decoding (`wgsl/flash_decode.wgsl`, partials merged by the last
 * workgroup of each head) for one token. Both read keys and values through the block tables, with lengths
 * per (layer, KV head), so the same kernels serve every cache policy. Queries are f32 `[nTokens][qHeads · headDim]` after RoPE;
 * outputs have the same layout. GQA: query head h reads KV head `h / (qHeads / kvHeads)`.
 *
 * @module
 */

import { BadFlagError, UnsupportedError } from "../../errors.ts";
import type { Gpu, Kernel } from "../device.ts";
import { loadShader } from "../shader.ts";
import type { ChainedInt8 } from "./int8_input.ts";
import { EMULATED_SUBGROUP_SIZE } from "./matvec_units.ts";
import {
  layerUniform,
  pagedKvConstants,
  type PagedKvView,
  POOL_FIRST_BINDING,
  shardEntries,
} from "../../kv/paged_view.ts";
import {
  bindNumbered,
  type BufferSlice,
  ceilDiv,
  checkInt,
  checkSlice,
  checkWorkgroups,
  type GpuOp,
  type StepParams,
} from "./op.ts";

/**
 * The WG-KV mask (opt-in): the cache rows are dual-cache rows (ring slots first, then global tokens) and a
 * query at position q sees a ring key at position p iff `p ≤ q` and (`q − p < window` or it was admitted),
 * and every global key. `DualCache` (src/kv/dual_cache.ts) provides these fields.
 */
export interface WgkvAttentionMask {
  /** Local window in tokens, including the query's own token. */
  readonly window: number;
  /** Ring slots at the start of each block-table row (a multiple of 16). */
  readonly ringTokens: number;
  /** `u32 [seqSlots][layers][kvHeads][ringTokens]`: position · 2 + admitted per ring slot. */
  readonly slotInfo: GPUBuffer;
}

/** Override constants and the slot-info binding for `mask` (plain causal attention when absent). */
function maskParts(gpu: Gpu, label: string, mask?: WgkvAttentionMask): {
  constants: Record<string, number>;
  slotInfo: GPUBuffer;
} {
  if (!mask) return { constants: {}, slotInfo: gpu.buffer(`${label} no slot info`, 4) };
  checkInt(label, "window", mask.window, 1);
  checkInt(label, "ringTokens", mask.ringTokens, 16);
  if (mask.ringTokens % 16 !== 0) {
    throw new BadFlagError(`${label}: ringTokens must be a multiple of 16, got ${mask.ringTokens}`);
  }
  return { constants: { wgkv_window: mask.window, ring_tokens: mask.ringTokens }, slotInfo: mask.slotInfo };
}

/** How a prefill workgroup tiles its work: score rows (tokens × GQA heads) and keys per step. */
interface PrefillTiling {
  /** Score rows per workgroup (`TILE_ROWS`); the workgroup has 2 · rows threads. */
  rows: number;
  /** Query tokens per workgroup (`TILE_TOKENS`): ⌊rows / group⌋. */
  tokens: number;
  /** Keys per step (`TILE_KEYS`), whole pages. */
  keys: number;
}

/**
 * Candidate prefill tilings, best first: many rows per workgroup (each K/V tile read from the pool serves
 * them all), then many keys per step. On an H100 at head_dim 128 (G 4, 4096 tokens) 64 rows × 16 keys ran at
 * 12.1 TFLOP/s against 6.7 for 32 × 32 and 2.8 for 16 × 32; 64 × 32 needs more than its 48 KB there. At
 * head_dim 64 (G 4) 64 × 48 ran at 12.2 TFLOP/s against 11.5 for 64 × 32 and 10.2 for 64 × 16 (4096 tokens;
 * 12.9 against 11.9 and 10.4 for 2048 tokens after 2048, bench/results/h100-attention-prefill-hd64-tilings.txt).
 */
const PREFILL_TILINGS: readonly PrefillTileShape[] = [
  { rows: 64, keys: 48 },
  { rows: 64, keys: 32 },
  { rows: 64, keys: 16 },
  { rows: 32, keys: 32 },
  { rows: 32, keys: 16 },
  { rows: 16, keys: 32 },
  { rows: 16, keys: 16 },
];

/**
 * Workgroup memory of the prefill kernel for a tiling (the shader's workgroup arrays), with `perThread`
 * more bytes for each of its 2 · rows threads (the emulated shuffles').
 */
function prefillWorkgroupBytes(
  rows: number,
  keys: number,
  headDim: number,
  kvHeads: number,
  perThread = 0,
  halfStaging = false,
): number {
  const staged = halfStaging ? 2 : 4; // bytes per staged query value and probability
  return rows * headDim * staged + keys * (headDim / 4 + 1) * 8 + keys * headDim * 2 + keys * rows * staged +
    rows * 32 + keys * 4 + 8 + 16 + kvHeads * 4 + 2 * rows * perThread;
}

/**
 * The attention kernels' text define SHUFFLE for a subgroups option: shuffle_xor as a subgroup shuffle
 * (`wgsl/shuffle_xor.wgsl`), the emulated exchange (`wgsl/shuffle_xor_emulated.wgsl`, a vec4 of workgroup
 * memory per thread), or a stub that is never called (off, `wgsl/shuffle_xor_none.wgsl`).
 */
function shuffleSource(subgroups: boolean | "emulated"): string {
  if (subgroups === "emulated") return loadShader("shuffle_xor_emulated");
  return loadShader(subgroups ? "shuffle_xor" : "shuffle_xor_none");
}

/**
 * The checked FlashPrefillOptions.subgroups: a {@link BadFlagError} naming `label` where the GPU cannot
 * take the shuffles (subgroups of fewer than a row quad's 8 lanes), and the emulation's workgroup memory per
 * thread.
 */
function prefillShuffleParts(
  gpu: Gpu,
  label: string,
  subgroups: boolean | "emulated",
): { on: boolean; source: string; bytesPerThread: number } {
  if (subgroups === true && (!gpu.subgroups || gpu.subgroups.minSize < 8)) {
    throw new BadFlagError(
      `${label}: subgroup row maxima need WGSL subgroups of at least 8 invocations (${
        gpu.subgroups
          ? `this GPU's are ${gpu.subgroups.minSize}-${gpu.subgroups.maxSize}`
          : "this GPU has none"
      })`,
    );
  }
  return {
    on: subgroups !== false,
    source: shuffleSource(subgroups),
    bytesPerThread: subgroups === "emulated" ? 16 : 0,
  };
}

/**
 * The requested tiling (checked), or else the first candidate that holds a whole GQA group and fits this
 * GPU's workgroup memory.
 */
function choosePrefillTiling(
  gpu: Gpu,
  label: string,
  headDim: number,
  group: number,
  kvHeads: number,
  wanted?: PrefillTileShape,
  perThread = 0,
  halfStaging = false,
): PrefillTiling {
  const bytes = (rows: number, keys: number) =>
    prefillWorkgroupBytes(rows, keys, headDim, kvHeads, perThread, halfStaging);
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  if (wanted) {
    const { rows, keys } = wanted;
    if (![16, 32, 64].includes(rows) || ![16, 32, 48, 64].includes(keys)) {
      throw new BadFlagError(`${label}: tiling needs rows 16, 32 or 64 and keys 16, 32, 48 or 64`);
    }
    if (group > rows) throw new BadFlagError(`${label}: ${rows} rows cannot hold a GQA group of ${group}`);
    checkWorkgroupMemory(gpu, label, bytes(rows, keys));
    return { rows, keys, tokens: Math.floor(rows / group) };
  }
  for (const { rows, keys } of PREFILL_TILINGS) {
    if (group <= rows && bytes(rows, keys) <= limit) {
      return { rows, keys, tokens: Math.floor(rows / group) };
    }
  }
  const smallest = PREFILL_TILINGS[PREFILL_TILINGS.length - 1];
  if (group > 64) throw new UnsupportedError(`${label}: a GQA group of ${group} heads exceeds 64`);
  checkWorkgroupMemory(gpu, label, bytes(smallest.rows, smallest.keys));
  throw new UnsupportedError(`${label}: a GQA group of ${group} heads does not fit the prefill tiles`);
}

/** The tiling constants spliced into `wgsl/flash_prefill.wgsl` at TILING. */
function prefillTilingSource(tiling: PrefillTiling, headDim: number): string {
  return [
    `const TILE_ROWS: u32 = ${tiling.rows}u;`,
    `const TILE_TOKENS: u32 = ${tiling.tokens}u;`,
    `const TILE_KEYS: u32 = ${tiling.keys}u;`,
    `const KEYS_PER_LANE: u32 = ${tiling.keys / 8}u;`,
    `const PAIRS_PER_LANE: u32 = ${Math.ceil(headDim / 16)}u;`,
    `const THREADS: u32 = ${2 * tiling.rows}u;`,
  ].join("\n");
}

/** Options shared by {@link createFlashPrefill} and {@link createFlashDecode}. */
export interface AttentionOptions {
  /** Name for the profiler and errors. */
  label: string;
  /** The cache to read. */
  kv: PagedKvView;
  /** Layer of the cache this op reads. */
  layer: number;
  /** Query heads (a multiple of the cache's KV heads). */
  qHeads: number;
  /** Queries after RoPE, f32[tokens][qHeads · headDim]. */
  q: BufferSlice;
  /** Output, f32[tokens][qHeads · headDim]. */
  out: BufferSlice;
  /** Softmax scale (default 1/√headDim). */
  scale?: number;
  /** Read the cache as a WG-KV dual cache with this mask (default: plain causal rows). */
  wgkv?: WgkvAttentionMask;
}

/** Workgroup tiling of the prefill kernel: score rows (query tokens × GQA heads) and keys per step. */
export interface PrefillTileShape {
  /** Score rows per workgroup: 16, 32 or 64 (at least the GQA group); 2 threads per row. */
  rows: number;
  /** Keys staged per step: 16, 32, 48 or 64. */
  keys: number;
}

/** Options of {@link createFlashPrefill}. */
export interface FlashPrefillOptions extends AttentionOptions {
  /** Largest number of query tokens per step; the dispatch is sized for it. */
  maxTokens: number;
  /** Tiling for tests and tuning (default: the best candidate that fits the GPU's workgroup memory). */
  tiling?: PrefillTileShape;
  /** Per-step token count (`nTokens`) and, in WG-KV mode, the first query's position (`pos0`). */
  step: StepParams;
  /**
   * Key splits per KV head on average (default 1: one workgroup per query tile and KV head writes the
   * output). With more, splits · kvHeads workgroups per query tile are shared out among the KV heads in
   * proportion to their lengths, each takes a range of the keys, and a second dispatch merges them: this
   * balances WG-KV heads of very different lengths and gives long rows more workgroups.
   */
  splits?: number;
  /**
   * Scratch for the partial results when splits > 1 ({@link prefillPartialsBytes}); may be shared by the
   * prefill ops of all layers. Created when absent.
   */
  partials?: BufferSlice;
  /**
   * Whether the rows' maxima of each key tile are taken over a row quad's 8 lanes by subgroup shuffles
   * (true; needs WGSL subgroups of at least 8 invocations), one barrier per key tile fewer, instead of
   * through workgroup memory (default false). `"emulated"` runs the same path with the shuffles through
   * workgroup memory on any GPU (for tests). Tested; not run on a GPU yet: Deno 2.9.6 offers no subgroups on the H100.
   */
  subgroups?: boolean | "emulated";
  /**
   * Whether the staged queries and probabilities are packed f16 pairs (true) instead of f32 (default
   * false): half their workgroup memory, so the default tiling may grow (head_dim 128: 64 rows × 32 keys
   * instead of × 16 within 48 KiB) and more workgroups fit a multiprocessor; queries and probabilities are
   * then rounded to f16 (K and V are f16 already), about 1e-3 of the outputs' scale. On an H100 at head_dim
   * 128 about 11% faster; at head_dim 64 the same (the model turns it on above 64, `prefillHalfStaging`).
   */
  halfStaging?: boolean;
}

/** Options of {@link createFlashDecode}. */
export interface FlashDecodeOptions extends AttentionOptions {
  /**
   * Also write the output as the output projection's shared int8 input (blocks of 16 values;
   * `./int8_input.ts`), so that product needs no quantisation pass: rows of `qHeads · headDim` values, one
   * token.
   */
  int8Out?: ChainedInt8;
  /**
   * Workgroups per KV head on average over the key range (default: min(32, pages per head)); the
   * splits · kvHeads workgroups are shared out among the heads by their lengths.
   */
  splits?: number;
  /**
   * Scratch for the partial results, f32[splits][qHeads][headDim + 2]; may be shared by the decode ops of
   * all layers (they run one after another). Created when absent.
   */
  partials?: BufferSlice;
  /** The step parameters; required with `wgkv` (the query's position is `pos0`). */
  step?: StepParams;
  /**
   * Steps per tile of the partial pass, 1 to 8: a step is one key per key lane (⌊256 / (headDim / 8)⌋ lanes,
   * at most 64), so a tile holds tileSteps × lanes keys and each thread has 2 · tileSteps loads in flight.
   * Default: about 8192 key values per tile (64 keys of head_dim 128) but at most 128 keys, fewer where the
   * tile would not fit the workgroup memory.
   */
  tileSteps?: number;
  /**
   * Key lanes of the partial pass (keys per step; its workgroup has keyLanes × headDim / 8 threads, at
   * least headDim of them for the split merge, at most the device's workgroup size). Default
   * ⌊256 / (headDim / 8)⌋, at most 64: 16 at head_dim 128, 32 at head_dim 64.
   */
  keyLanes?: number;
  /**
   * Subgroup operations (true; needs a GPU with WGSL `subgroups` whose subgroups hold at least headDim / 8
   * invocations, and headDim / 8 a power of two): each key's dot products are summed across its threads
   * with shuffles, so that a tile's scores stay in registers and the tile needs no barrier, and the key
   * lanes of a subgroup merge by shuffles before the rounds through workgroup memory.
   * Default false: a thread per key sums the partials through workgroup memory. `"emulated"` runs the
   * same path with the shuffles through workgroup memory on any GPU (for tests). Tested; not run on a GPU
   * yet: Deno 2.9.6 offers no subgroups on the H100.
   */
  subgroups?: boolean | "emulated";
  /**
   * Whether each slot starts at a different tile of its page range and wraps around (default true), so the
   * slots do not read the same page offsets at the same time.
   */
  rotateTiles?: boolean;
  /**
   * Rows this short run without splits: while the query's position + 1 (the most keys any head can hold)
   * is at most `directKeys`, one workgroup per KV head and head batch covers the whole row and writes the
   * output itself, without partials or a merge. Needs `step` (its `pos0` is read when the op is
   * encoded); 0 turns it off. Default {@link DEFAULT_DIRECT_KEYS} with a step, else 0.
   */
  directKeys?: number;
  /**
   * Whether every KV head's row holds `step.pos0 + 1` keys, as the full cache does at decode (true): the
   * workgroups then plan their slots from the position, without reading the row lengths or waiting on a
   * barrier. Needs `step`; not with `wgkv` (its heads keep different numbers of keys). Default false (the
   * model turns it on for the full cache: `GpuModelOptions.decodeUniformRows`).
   */
  uniformRows?: boolean;
  /**
   * Key lanes of the direct mode's workgroup (see {@link directKeys}), which may differ from the split
   * path's: short rows have few keys, and fewer lanes mean fewer merge rounds. At least 1. Default:
   * `keyLanes`.
   */
  directKeyLanes?: number;
  /**
   * Whether the split path merges the splits in the partial pass itself (default true): the last
   * workgroup of each KV head and head batch to finish (counted in `arrivals`) merges the head's splits
   * and writes the outputs, so there is no reduce dispatch. False keeps the separate reduce pass.
   */
  fusedReduce?: boolean;
  /**
   * Arrival counters of the fused reduce, u32[kvHeads · ⌈G / 4⌉], zero; the kernel leaves them at zero, so
   * the decode ops of all layers may share one. Created when absent.
   */
  arrivals?: BufferSlice;
  /**
   * For benchmarks only, where the outputs are then wrong: the partial pass ends its workgroups early, to
   * see where its time goes: `launch` at once, `tiles` after the key tiles, `lanes` after the key lanes'
   * merge and the partials (before the split merge). Default: none.
   */
  ablate?: DecodeAblation;
}

/** Where {@link FlashDecodeOptions.ablate} ends the decode attention's workgroups. */
export type DecodeAblation = "launch" | "tiles" | "lanes";

const ABLATION_STAGE: Record<DecodeAblation, number> = { launch: 1, tiles: 2, lanes: 3 };

/** Bytes of the arrival counters of a fused-reduce decode op ({@link FlashDecodeOptions.arrivals}). */
export function decodeArrivalsBytes(kvHeads: number, qHeads: number): number {
  return kvHeads * ceilDiv(qHeads / kvHeads, DECODE_HEADS_PER_BATCH) * 4;
}

/**
 * Decode rows of at most this many keys run without splits by default (see
 * {@link FlashDecodeOptions.directKeys}). Measured on an H100 when the split path still took a reduce
 * dispatch (8B shape, 8 KV heads, µs per layer, bench:attention): 256 keys 20.8 direct against 24.0 for the
 * best split count, 512 keys 51.0 against 48.7, 1024 keys 189 against 45; end to end, 8B Q4_K_M decode at
 * depth 0 went from 206 to 221 tok/s. With the merge in the partial pass the crossover may lie lower.
 */
export const DEFAULT_DIRECT_KEYS = 384;

function checkHeads(options: AttentionOptions): number {
  const { label, kv, qHeads, layer } = options;
  checkInt(label, "layer", layer, 0, kv.layers - 1);
  checkInt(label, "qHeads", qHeads, 1);
  if (qHeads % kv.kvHeads !== 0) {
    throw new BadFlagError(`${label}: ${qHeads} query heads are not a multiple of ${kv.kvHeads} KV heads`);
  }
  return qHeads / kv.kvHeads;
}

/** The slot plan (wgsl/slot_plan.wgsl) multiplies slots by pages in u32: refuses what would overflow. */
function checkSlotPlan(label: string, splits: number, kv: PagedKvView): void {
  if (splits * kv.kvHeads * kv.kvHeads * kv.maxPagesPerHead >= 2 ** 32) {
    throw new UnsupportedError(
      `${label}: ${splits} splits × ${kv.kvHeads} KV heads over ${kv.maxPagesPerHead} pages per head overflow the slot plan`,
    );
  }
}

function checkWorkgroupMemory(gpu: Gpu, label: string, bytes: number): void {
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  if (bytes > limit) {
    throw new UnsupportedError(`${label}: needs ${bytes} B of workgroup memory, this GPU has ${limit} B`);
  }
}

/**
 * Bytes of the decode partials for `splits` splits: f32 weighted V sums `[splits][qHeads][headDim]`, then
 * `[splits][qHeads][2]` (running max, sum of weights).
 */
export function decodePartialsBytes(splits: number, qHeads: number, headDim: number): number {
  return splits * qHeads * (headDim + 2) * 4;
}

/** Query heads served by one workgroup of the decode partial pass (the lanes of a vec4). */
const DECODE_HEADS_PER_BATCH = 4;

/** Key lanes of the decode partial pass: keys per step, so its workgroup has keyLanes × headDim / 8 threads. */
function decodeKeyLanes(headDim: number): number {
  return Math.min(64, Math.floor(256 / (headDim / 8)));
}

/**
 * Steps per tile by default: about 8192 key values per tile (64 keys of 128 values, 128 of 64: 32 KB of K and
 * V in f16) but at most 128 keys, fewer while the workgroup memory would not fit. On an H100
 * (bench:attention, 8 KV heads, 32 splits, 32768 keys) head_dim 64 ran 50.7 µs per layer with 4 steps
 * against 61.0 with 2 (64 keys per tile, the default before) and 57.0 with 8; head_dim 128 79.2 with 4
 * against 83.7 with 8.
 */
function defaultDecodeTileSteps(gpu: Gpu, headDim: number, lanes: number, kvHeads: number): number {
  let steps = Math.max(1, Math.min(8, Math.round(8192 / (lanes * headDim)), Math.round(128 / lanes)));
  while (
    steps > 1 &&
    decodeWorkgroupBytes(headDim, lanes, steps, kvHeads) > gpu.limits.maxComputeWorkgroupStorageSize
  ) {
    steps--;
  }
  return steps;
}

/**
 * Workgroup memory of the decode partial pass (the `var<workgroup>` declarations of `main` and of
 * `wgsl/decode_attend.wgsl`) for `keyLanes` key lanes of head_dim / 8 threads and tiles of `tileSteps`
 * steps.
 */
function decodeWorkgroupBytes(
  headDim: number,
  keyLanes: number,
  tileSteps: number,
  kvHeads: number,
  emulatedShuffles = false,
): number {
  const quads = headDim / 8, tileKeys = tileSteps * keyLanes;
  const exchange = Math.max(tileKeys * (quads + 1), Math.ceil(keyLanes / 2) * quads * 10);
  // decode_attend's exchange and tile_scores, then slot_plan, last_arrival and head_lengths
  // (and the emulated shuffles' values, a vec4 per thread)
  return (exchange + tileKeys) * 16 + 16 + 4 + kvHeads * 4 + (emulatedShuffles ? keyLanes * quads * 16 : 0);
}

/**
 * Checks that the decode partial pass fits this GPU's workgroup memory with `keyLanes` lanes and tiles of
 * `tileSteps` steps (a {@link UnsupportedError} naming `label` otherwise).
 */
function checkDecodeWorkgroupMemory(
  gpu: Gpu,
  label: string,
  options: FlashDecodeOptions,
  headDim: number,
  keyLanes: number,
  tileSteps: number,
  kvHeads: number,
): void {
  checkWorkgroupMemory(
    gpu,
    label,
    decodeWorkgroupBytes(headDim, keyLanes, tileSteps, kvHeads, options.subgroups === "emulated"),
  );
}

/**
 * The direct mode's kernel of `wgsl/flash_decode.wgsl`: the split path's `constants` and `defines` with one
 * slot per KV head, and its own key lanes where `options.directKeyLanes` asks (with the subgroup constants
 * that follow from them), checked against the workgroup memory.
 */
function directDecodeKernel(
  gpu: Gpu,
  label: string,
  options: FlashDecodeOptions,
  constants: Record<string, number>,
  defines: Record<string, string>,
  split: { keyLanes: number; tileSteps: number; kvHeads: number },
): Kernel {
  const lanes = options.directKeyLanes ?? split.keyLanes;
  if (lanes === split.keyLanes) {
    return gpu.kernel("flash_decode", { ...constants, splits: 1, direct: 1 }, defines);
  }
  const D = constants.head_dim;
  checkInt(
    label,
    "directKeyLanes",
    lanes,
    1,
    Math.floor(gpu.limits.maxComputeInvocationsPerWorkgroup / (D / 8)),
  );
  const subgroups = subgroupParts(gpu, label, D, lanes, options.subgroups ?? false);
  checkDecodeWorkgroupMemory(gpu, label, options, D, lanes, split.tileSteps, split.kvHeads);
  return gpu.kernel(
    "flash_decode",
    { ...constants, ...subgroups.constants, splits: 1, direct: 1, key_lanes: lanes },
    { ...defines, ...subgroups.defines },
  );
}

/**
 * What `wgsl/flash_decode.wgsl` takes for FlashDecodeOptions.subgroups: the text define SHUFFLE
 * ({@link shuffleSource}) and the override constants
 * subgroup_dots and subgroup_lanes (key lanes per subgroup merged by shuffles: as many as one subgroup
 * holds, where the workgroup is whole subgroups and the key lanes divide evenly, else 1). (wgpu's WGSL
 * takes subgroup builtins without `enable subgroups;`, which its compiler refuses as not yet implemented.)
 * Throws a {@link BadFlagError} naming `label` when this GPU cannot take them for head_dim `headDim`.
 */
function subgroupParts(
  gpu: Gpu,
  label: string,
  headDim: number,
  keyLanes: number,
  subgroups: boolean | "emulated",
): { defines: Record<string, string>; constants: Record<string, number> } {
  if (!subgroups) {
    return {
      defines: { SHUFFLE: shuffleSource(false) },
      constants: { subgroup_dots: 0, subgroup_lanes: 1 },
    };
  }
  const quads = headDim / 8;
  let size = EMULATED_SUBGROUP_SIZE;
  if (subgroups === true) {
    if (!gpu.subgroups) {
      throw new BadFlagError(
        `${label}: subgroup operations need WGSL subgroups, which this GPU does not offer`,
      );
    }
    size = gpu.subgroups.minSize;
  }
  if ((quads & (quads - 1)) !== 0 || quads > size) {
    throw new BadFlagError(
      `${label}: subgroup operations need head_dim / 8 (${quads}) a power of two within a subgroup (${
        subgroups === true ? `this GPU's are ${gpu.subgroups!.minSize}-${gpu.subgroups!.maxSize}` : size
      } invocations)`,
    );
  }
  const perSubgroup = Math.min(size / quads, keyLanes);
  const wholeSubgroups = (keyLanes * quads) % size === 0 && keyLanes % perSubgroup === 0;
  return {
    defines: { SHUFFLE: shuffleSource(subgroups) },
    constants: { subgroup_dots: 1, subgroup_lanes: wholeSubgroups ? perSubgroup : 1 },
  };
}

/**
 * WGSL declaring the pool shards at bindings POOL_FIRST_BINDING … as `array<vec4<u32>>` and accessors, where
 * `quad` counts vec4<u32> inside a page (pages hold `PAGE_TOKENS · head_dim / 8` quads of K, then as many
 * of V, so every row starts on a 16-byte boundary):
 * - `pool_load_kv(page, quad)`: the K quad and the V quad at the same place of their halves (and
 *   {@link poolQuadLoadSource} for the decode kernel's loads).
 *
 * Each accessor picks the page's shard once, around all of its loads, so the loads of one accessor can be in
 * flight together (a branch per load, what a per-quad accessor inside an unrolled loop amounts to, may make
 * each wait for the one before). With one shard there is no branch at all.
 */
export function poolQuadShaderSource(shardCount: number): string {
  const firstBinding = POOL_FIRST_BINDING;
  const lines = [
    `// Pool shards: binding ${firstBinding}+s = shard s, vec4<u32>[pool_pages_per_shard][PAGE_TOKENS * head_dim / 4];`,
    `// page p lives in shard p / pool_pages_per_shard.`,
  ];
  for (let s = 0; s < shardCount; s++) {
    lines.push(`@group(0) @binding(${firstBinding + s}) var<storage, read> pool_shard_${s}: array<vec4u>;`);
  }
  const perShard = (indent: string, body: (shard: string) => string[]) =>
    poolShardSwitch(shardCount, "page", indent, body);
  const at = `  let i = (page % pool_pages_per_shard) * (PAGE_TOKENS * head_dim / 4u) + quad;`;
  const vHalf = `PAGE_TOKENS * head_dim / 8u`;
  lines.push(
    `fn pool_load_kv(page: u32, quad: u32) -> array<vec4u, 2> {`,
    at,
    `  var out: array<vec4u, 2>;`,
    ...perShard("  ", (shard) => [`out[0] = ${shard}[i];`, `out[1] = ${shard}[i + ${vHalf}];`]),
    `  return out;`,
    `}`,
  );
  return lines.join("\n");
}

/**
 * WGSL lines running `body(shard)` for the shard of page `page`: straight-line code with one shard, else a
 * switch over the shards (the page's shard is chosen once around the whole body).
 */
function poolShardSwitch(
  shardCount: number,
  page: string,
  indent: string,
  body: (shard: string) => string[],
): string[] {
  if (shardCount === 1) return body("pool_shard_0").map((l) => indent + l);
  const out = [`${indent}switch (${page} / pool_pages_per_shard) {`];
  for (let s = 0; s < shardCount; s++) {
    out.push(`${indent}  ${s === shardCount - 1 ? "default" : `case ${s}u`}: {`);
    out.push(...body(`pool_shard_${s}`).map((l) => `${indent}    ${l}`));
    out.push(`${indent}  }`);
  }
  out.push(`${indent}}`);
  return out;
}

/**
 * WGSL statements for `wgsl/decode_attend.wgsl`'s LOAD_QUADS (in `wgsl/flash_decode.wgsl`): the K quad and
 * the V quad at quad `at` of page `page`'s halves, into the kernel's `k_words[u]` and `v_words[u]`. Spliced
 * into the kernel body (inside its unrolled step loop) rather than called, so the arrays stay in registers
 * and all loads of a tile can be in flight together; with several shards the page's shard is chosen once
 * around both loads.
 */
export function poolQuadLoadSource(shardCount: number): string {
  return poolShardSwitch(shardCount, "page", "", (shard) => [
    `k_words[u] = ${shard}[at];`,
    `v_words[u] = ${shard}[at + PAGE_TOKENS * head_dim / 8u];`,
  ]).join("\n");
}

/** `slice` cut to its first `bytes` bytes. */
function slicePrefix(slice: BufferSlice, bytes: number): GPUBufferBinding {
  return slice instanceof GPUBuffer
    ? { buffer: slice, offset: 0, size: bytes }
    : { buffer: slice.buffer, offset: slice.offset ?? 0, size: bytes };
}

/**
 * Builds the prefill attention op of one layer: the step's `nTokens` queries (logical indices
 * `length − nTokens …` of their rows) attend causally to all keys of their KV head in the cache.
 */
export function createFlashPrefill(gpu: Gpu, options: FlashPrefillOptions): GpuOp {
  const { label, kv, layer, qHeads, q, out, maxTokens, step } = options;
  const groupSize = checkHeads(options);
  checkInt(label, "maxTokens", maxTokens, 1, step.maxTokens);
  const D = kv.headDim;
  if (D % 8 !== 0 || D > 256) {
    throw new UnsupportedError(`${label}: head_dim ${D} is not a multiple of 8 up to 256`);
  }
  checkSlice(label, "q", q, maxTokens * qHeads * D * 4);
  checkSlice(label, "out", out, maxTokens * qHeads * D * 4);
  const shuffles = prefillShuffleParts(gpu, label, options.subgroups ?? false);
  const tiling = choosePrefillTiling(
    gpu,
    label,
    D,
    groupSize,
    kv.kvHeads,
    options.tiling,
    shuffles.bytesPerThread,
    options.halfStaging ?? false,
  );
  const tiles = ceilDiv(maxTokens, tiling.tokens);
  const splits = options.splits ?? 1;
  checkInt(label, "splits", splits, 1, 64);
  const slots = splits * kv.kvHeads;
  checkWorkgroups(gpu, label, Math.max(tiles, slots, maxTokens, qHeads));
  checkSlotPlan(label, splits, kv);
  const partialBytes = prefillPartialsBytes(splits, maxTokens, qHeads, D);
  const partials = splits > 1 ? options.partials ?? gpu.buffer(`${label} partials`, partialBytes) : undefined;
  if (partials) checkSlice(label, "partials", partials, partialBytes);
  const mask = maskParts(gpu, label, options.wgkv);
  const constants = {
    ...pagedKvConstants(kv),
    q_heads: qHeads,
    scale: options.scale ?? 1 / Math.sqrt(D),
    ...mask.constants,
    group: groupSize,
    splits,
    max_tokens: maxTokens,
    subgroup_max: shuffles.on ? 1 : 0,
  };
  const defines = {
    POOL: poolQuadShaderSource(kv.shards.length),
    TILING: prefillTilingSource(tiling, D),
    SHUFFLE: shuffles.source,
    STAGING: loadShader(options.halfStaging ? "prefill_staging_f16" : "prefill_staging_f32"),
  };
  const kernel = gpu.kernel("flash_prefill", constants, defines);
  const layerParams = layerUniform(gpu, label, layer);
  const scratch = partials ? slicePrefix(partials, partialBytes) : gpu.buffer(`${label} no partials`, 4);
  const group = bindNumbered(gpu, kernel, [
    [0, step.buffer],
    [1, kv.sequence],
    [2, layerParams],
    [3, q],
    [4, out],
    [5, kv.blockTable],
    [6, kv.lengths],
    ...shardEntries(kv),
    [16, mask.slotInfo],
    [17, scratch],
  ]);
  if (!partials) {
    return {
      label,
      encode(pass: GPUComputePassEncoder): void {
        pass.setPipeline(kernel.pipeline);
        pass.setBindGroup(0, group);
        pass.dispatchWorkgroups(tiles, kv.kvHeads);
      },
    };
  }
  const reduceKernel = gpu.kernel("flash_prefill", constants, defines, "reduce");
  const reduceGroup = bindNumbered(gpu, reduceKernel, [
    [0, step.buffer],
    [1, kv.sequence],
    [2, layerParams],
    [4, out],
    [6, kv.lengths],
    [18, scratch],
  ]);
  return {
    label,
    encode(pass: GPUComputePassEncoder): void {
      pass.setPipeline(kernel.pipeline);
      pass.setBindGroup(0, group);
      pass.dispatchWorkgroups(tiles, slots);
      pass.setPipeline(reduceKernel.pipeline);
      pass.setBindGroup(0, reduceGroup);
      pass.dispatchWorkgroups(maxTokens, qHeads);
    },
  };
}

/**
 * Bytes of the prefill partials for `splits` key splits: f32 unnormalised outputs
 * `[splits · kvHeads][maxTokens][group][headDim]`, then `[…][2]` (running max, sum of weights).
 */
export function prefillPartialsBytes(
  splits: number,
  maxTokens: number,
  qHeads: number,
  headDim: number,
): number {
  return splits * maxTokens * qHeads * (headDim + 2) * 4;
}

/**
 * Builds the decode attention op of one layer: one query token (the last token of each row) attends to
 * every key of its KV head. One dispatch of partials over (splits · KV heads slots × ⌈G / 4⌉ head batches)
 * whose last workgroup per KV head and head batch merges them ({@link FlashDecodeOptions.fusedReduce}; or a
 * second dispatch, a merge per KV head and head batch). The grid is fixed; the slots are shared out among
 * the KV heads in proportion to their pages on the GPU (at least one per head with keys), so ragged heads
 * finish together. Short rows (see {@link FlashDecodeOptions.directKeys}) take one dispatch of a workgroup per KV
 * head and head batch that covers the whole row.
 */
export function createFlashDecode(gpu: Gpu, options: FlashDecodeOptions): GpuOp {
  const { label, kv, layer, qHeads, q, out } = options;
  const group = checkHeads(options);
  const D = kv.headDim;
  if (group * D > 2048) {
    throw new UnsupportedError(`${label}: a GQA group of ${group} heads × head_dim ${D} exceeds 2048 values`);
  }
  if (D % 8 !== 0 || D > 256) {
    throw new UnsupportedError(`${label}: head_dim ${D} is not a multiple of 8 up to 256`);
  }
  const splits = options.splits ?? Math.min(32, kv.maxPagesPerHead);
  checkInt(label, "splits", splits, 1, gpu.limits.maxComputeWorkgroupsPerDimension);
  const keyLanes = options.keyLanes ?? decodeKeyLanes(D);
  // At least 8 lanes: the split merge takes a thread per head of the batch and 4 dimensions (head_dim threads).
  checkInt(
    label,
    "keyLanes",
    keyLanes,
    8,
    Math.floor(gpu.limits.maxComputeInvocationsPerWorkgroup / (D / 8)),
  );
  const tileSteps = options.tileSteps ?? defaultDecodeTileSteps(gpu, D, keyLanes, kv.kvHeads);
  checkInt(label, "tileSteps", tileSteps, 1, 8);
  const headBatches = ceilDiv(group, DECODE_HEADS_PER_BATCH);
  const slots = splits * kv.kvHeads;
  checkWorkgroups(gpu, label, Math.max(slots, headBatches));
  checkSlotPlan(label, splits, kv);
  checkSlice(label, "q", q, qHeads * D * 4);
  checkSlice(label, "out", out, qHeads * D * 4);
  const subgroups = subgroupParts(gpu, label, D, keyLanes, options.subgroups ?? false);
  checkDecodeWorkgroupMemory(gpu, label, options, D, keyLanes, tileSteps, kv.kvHeads);
  const partialBytes = decodePartialsBytes(splits, qHeads, D);
  const partials = options.partials ?? gpu.buffer(`${label} partials`, partialBytes);
  checkSlice(label, "partials", partials, partialBytes);
  if (options.wgkv && !options.step) {
    throw new BadFlagError(`${label}: the WG-KV mask needs the step parameters`);
  }
  if (options.uniformRows && (!options.step || options.wgkv)) {
    throw new BadFlagError(`${label}: uniformRows needs the step parameters and no WG-KV mask`);
  }
  const mask = maskParts(gpu, label, options.wgkv);
  const stepBuffer = options.step?.buffer ?? gpu.uniform(`${label} no step`, new Uint32Array(4));
  const constants: Record<string, number> = {
    ...pagedKvConstants(kv),
    q_heads: qHeads,
    splits,
    scale: options.scale ?? 1 / Math.sqrt(D),
    k_quads: D / 8,
    key_lanes: keyLanes,
    tile_steps: tileSteps,
    rotate_tiles: options.rotateTiles === false ? 0 : 1,
    uniform_rows: options.uniformRows ? 1 : 0,
    ...subgroups.constants,
    ...mask.constants,
  };
  if (options.ablate !== undefined) {
    if (!(options.ablate in ABLATION_STAGE)) {
      throw new BadFlagError(`${label}: ablate must be launch, tiles or lanes, got ${options.ablate}`);
    }
    constants.ablate = ABLATION_STAGE[options.ablate];
  }
  const int8Out = options.int8Out;
  if (int8Out && (int8Out.cols !== qHeads * D || D % 16 !== 0)) {
    throw new UnsupportedError(
      `${label}: int8 output needs heads of a multiple of 16 values (${D}) in rows of ${
        qHeads * D
      }, not ${int8Out.cols}`,
    );
  }
  const defines = {
    POOL: poolQuadShaderSource(kv.shards.length),
    LOAD_QUADS: poolQuadLoadSource(kv.shards.length),
    ...subgroups.defines,
    ATT_INT8: loadShader(int8Out ? "attention_int8_out" : "attention_int8_out_none"),
  };
  const int8Entries: [number, BufferSlice][] = int8Out ? [[24, int8Out.blocks], [25, int8Out.scales]] : [];
  const fusedReduce = options.fusedReduce ?? true;
  const partialKernel = gpu.kernel(
    "flash_decode",
    { ...constants, fused_reduce: fusedReduce ? 1 : 0 },
    defines,
    "main",
  );
  const reduceKernel = fusedReduce ? undefined : gpu.kernel("flash_decode", constants, defines, "reduce");
  const arrivalBytes = decodeArrivalsBytes(kv.kvHeads, qHeads);
  const arrivals = options.arrivals ?? gpu.buffer(`${label} arrivals`, arrivalBytes);
  checkSlice(label, "arrivals", arrivals, arrivalBytes);
  const step = options.step;
  const directKeys = step ? options.directKeys ?? DEFAULT_DIRECT_KEYS : 0;
  checkInt(label, "directKeys", directKeys, 0);
  if (options.directKeys && !step) throw new BadFlagError(`${label}: directKeys needs the step parameters`);
  const directKernel = directKeys > 0
    ? directDecodeKernel(gpu, label, options, constants, defines, {
      keyLanes,
      tileSteps,
      kvHeads: kv.kvHeads,
    })
    : undefined;
  const layerParams = layerUniform(gpu, label, layer);
  // The partial pass and the direct mode bind the same buffers (direct mode leaves `partials` unused).
  const mainEntries: [number, BufferSlice][] = [
    [0, stepBuffer],
    [1, kv.sequence],
    [2, layerParams],
    [3, q],
    [4, slicePrefix(partials, partialBytes)],
    [5, out],
    [6, kv.blockTable],
    [7, kv.lengths],
    ...shardEntries(kv),
    [16, mask.slotInfo],
    [19, arrivals],
    ...int8Entries,
  ];
  const partialGroup = bindNumbered(gpu, partialKernel, mainEntries);
  const directGroup = directKernel && bindNumbered(gpu, directKernel, mainEntries);
  const reduceGroup = reduceKernel && bindNumbered(gpu, reduceKernel, [
    [1, kv.sequence],
    [2, layerParams],
    [4, slicePrefix(partials, partialBytes)],
    [5, out],
    [7, kv.lengths],
    ...int8Entries,
  ]);
  return {
    label,
    encode(pass: GPUComputePassEncoder): void {
      if (directKernel && step && step.pos0 + 1 <= directKeys) {
        pass.setPipeline(directKernel.pipeline);
        pass.setBindGroup(0, directGroup!);
        pass.dispatchWorkgroups(kv.kvHeads, headBatches);
        return;
      }
      pass.setPipeline(partialKernel.pipeline);
      pass.setBindGroup(0, partialGroup);
      pass.dispatchWorkgroups(slots, headBatches);
      if (!reduceKernel) return;
      pass.setPipeline(reduceKernel.pipeline);
      pass.setBindGroup(0, reduceGroup!);
      pass.dispatchWorkgroups(kv.kvHeads, headBatches);
    },
  };
}

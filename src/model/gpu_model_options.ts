/**
 * The options of a {@link GpuModel} (`GpuModelOptions`: policies, tunings, ablations for benchmarks) and the
 * defaults that depend on the GPU, the policy or the shape, each with the measurement that chose it.
 *
 * @module
 */

import type { MatvecTuning } from "../gpu/ops/matmul.ts";
import type { DecodeAblation, PrefillTileShape } from "../gpu/ops/attention.ts";
import type { SampleSettings } from "../gpu/ops/sample.ts";
import type { GpuProfiler } from "../gpu/profiler.ts";
import type { ReadbackMode } from "../gpu/readback.ts";
import type { KvPolicy } from "../kv/wgkv_policy.ts";
import type { GateWeights } from "../gate/format.ts";
/** Most column ranges a prefill product into the residual splits K into by default. */
export const DEFAULT_PREFILL_K_SPLITS = 4;

/** Where a run of GPU-sampled steps starts: the settings, the tokens so far and the index of its first draw. */
export interface SampleStart {
  /** Sampling settings (temperature, top-k, top-p, min-p, repetition penalty, seed). */
  settings: SampleSettings;
  /** The tokens so far, the one fed first included (only the last `repeatLastN` matter). */
  history: readonly number[];
  /** Index of the first draw of the run in the random stream of `settings.seed`. */
  draw: number;
}

/** Options of {@link GpuModel.load}. */
export interface GpuModelOptions {
  /** Tokens the KV cache holds (positions 0 … contextLength−1). */
  contextLength: number;
  /**
   * Most prompt tokens per prefill step (longer prompts run in chunks). Default {@link defaultPrefillBatch}:
   * 2048 for the full cache on a GPU, 512 otherwise.
   */
  maxBatch?: number;
  /** Progress messages while uploading. */
  onProgress?: (message: string) => void;
  /** Times every op with timestamp queries (one compute pass per op). */
  profiler?: GpuProfiler;
  /** Which tokens the KV cache keeps (default `full`: all of them). */
  policy?: KvPolicy<GateWeights>;
  /**
   * For policies other than `full`: the fraction of a full cache reserved for admitted tokens beyond the
   * window (default: the random policy's rate, 0 for window, enough for the sinks, 0.5 for wgkv). A head
   * that needs more fails with a clear error naming this option.
   */
  globalFraction?: number;
  /**
   * Decode: fold each RMSNorm into the matvecs around it (the product before adds onto the residual and
   * writes its sums of squares, the fused QKV or gate/up after scales by the RMS), saving a dispatch per
   * norm where the product before is in one buffer. Default true.
   */
  foldNorms?: boolean;
  /**
   * Decode with the full cache: the fused QKV matvec also stores K and V into the cache pages, saving the
   * KV append dispatch per layer (where the cache's bindings fit the kernel; otherwise, and for prefill, the
   * append stays a dispatch of its own; the WG-KV dual cache has {@link fuseWgkvAppend}). Default true.
   */
  fuseKvAppend?: boolean;
  /**
   * The dual cache's append fused into the step's other dispatches, saving the WG-KV append dispatch per
   * layer where the bindings fit: `wgkv` prefill stores K and V into the ring from the write gate's flag
   * dispatch; decode from each layer's fused QKV (see {@link gatesAfterLayers}; the window, sink and random
   * policies decide their flags there by rule, their prefill keeps the append dispatch). Default true.
   */
  fuseWgkvAppend?: boolean;
  /**
   * The `wgkv` policy, decode with the ring append in the write gate ({@link fuseWgkvAppend}): each layer's
   * gate decides the previous layer's flags in the same dispatch as its own partial logits, so a layer's
   * gate is one dispatch instead of two (the last layer keeps two; see `WriteGateOptions.chain`). Default
   * true where the bindings fit.
   */
  chainWriteGates?: boolean;
  /**
   * The `wgkv` policy, decode: each layer's fused QKV stores K and V into the ring (with the slot's
   * position, not yet admitted), and the write gates of all layers run after the last layer in two
   * dispatches that set the flags (`createWriteGateLayers`), instead of a gate dispatch per layer before
   * attention: a step's attention never needs the flag of its own token, which stays in the window for the
   * next `window - 1` steps. Default true where the bindings fit, unless {@link fuseWgkvAppend} is false
   * (then {@link chainWriteGates} does not apply to decode). The window, sink and random policies' decode
   * always stores through the QKV that way (their flags follow a rule), with {@link fuseWgkvAppend}.
   */
  gatesAfterLayers?: boolean;
  /**
   * Dual caches: most global pages a (layer, KV head) row takes from the pool at once, so that its pages
   * lie in runs of consecutive pages rather than one page among every other row's (default
   * `MAX_GLOBAL_PAGE_RUN`, 32; 1: a page at a time; see `DualCacheOptions.globalPageRun`).
   */
  globalPageRun?: number;
  /**
   * How results come back to the CPU: "early" as soon as Deno's `mapAsync` has mapped the staging buffer,
   * not 10 ms later when its promise resolves; "wait" when the promise resolves. Default: early on the Deno
   * releases that was checked on (`defaultReadbackMode`, src/gpu/readback.ts).
   */
  readback?: ReadbackMode;
  /**
   * Prefill attention: key splits per KV head (default 4 for `wgkv` on a GPU, else 1). With more than 1, each query tile's keys are shared out among splits · KV heads workgroups in
   * proportion to the heads' lengths and merged by a second dispatch (see createFlashPrefill), which evens
   * out WG-KV heads of very different lengths.
   */
  prefillSplits?: number;
  /**
   * Prefill attention tiling (score rows × keys per step), for benchmarking; default: the best candidate
   * that fits the GPU (see createFlashPrefill).
   */
  prefillTiling?: PrefillTileShape;
  /**
   * Prefill attention's rows' maxima by subgroup shuffles (`FlashPrefillOptions.subgroups`; `"emulated"`
   * for tests). Default false.
   */
  prefillSubgroups?: boolean | "emulated";
  /**
   * Prefill attention stages its queries and probabilities as packed f16 pairs (see
   * `FlashPrefillOptions.halfStaging`). Default: {@link defaultPrefillHalfStaging} (on a GPU for head_dim
   * above 64).
   */
  prefillHalfStaging?: boolean;
  /**
   * Decode matvec tunings by role (`attn_qkv`, `attn_output`, `ffn_gate_up`, `ffn_down`, `output`), for
   * benchmarking on a given GPU; a role left out gets the kernels' defaults.
   */
  matvecTuning?: Partial<Record<MatvecRole, MatvecTuning>>;
  /**
   * Prefill: matrix products through 8-bit integer dot products (`./../gpu/ops/matmul_int8.ts`) for the
   * weights that have an integer view (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K), the activations quantised per
   * 32-value block first; the others keep the f32 kernels. Changes the prefill's results by the
   * activations' rounding (as llama.cpp's quantised products do: about 1% of the logits' spread on
   * synthetic models). Default true on a GPU (on an H100 the 8B products ran 1.2–3.0× faster in one
   * `bench:matmul` run; 8B Q4_K_M prefill of 512 tokens 2239 tok/s, 1651 with f32 products in an earlier
   * run), false on a software adapter (lavapipe), where the f32 kernels are the faster ones.
   */
  int8Prefill?: boolean;
  /**
   * Decode: matrix-vector products of quantised weights (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K) through 8-bit integer
   * dot products (`MatvecTuning.int8`), the input quantised per 16 values: by each workgroup in its workgroup
   * memory for rows of up to {@link INT8_STAGED_MAX_COLS} values, by a pass of its own once per step for
   * longer rows in the layers' products of {@link SHARED_INT8_MIN_ROWS} rows or more
   * (`MatvecTuning.sharedInt8`); other types and products keep the f32 kernels. Changes the decode's results
   * by the activations' rounding, as llama.cpp's quantised matrix-vector products do. Default true on a GPU,
   * false on a software adapter (lavapipe). A role's `matvecTuning` fields override it. Products whose
   * workgroups quantise their own input launch at most {@link INT8_DECODE_MAX_WORKGROUPS} workgroups by
   * default, each quantising it once for several row groups.
   */
  int8Decode?: boolean;
  /**
   * Decode: a product followed by one that takes the shared int8 input (`MatvecTuning.sharedInt8`) writes
   * that input itself as it writes its outputs (the decode attention for attn_output, the folded-norm
   * producers attn_output and ffn_down for gate/up and the next QKV, the fused gate/up for ffn_down;
   * `src/gpu/ops/int8_input.ts`), so the next product needs no quantisation pass of its own: the same bits,
   * four dispatches fewer per layer on the 8B shape. Default false: not yet timed on a GPU.
   */
  decodeInt8Chain?: boolean;
  /**
   * Prefill: matrix products of F16 weights with f16 arithmetic (`MatmulTuning.half`: f16 tiles and FMAs,
   * each step of 16–32 columns summed in f16, the steps in f32), where the GPU has `shader-f16`. Changes the
   * prefill's results by the activations' rounding to f16 and the step sums' (0.2–0.3% of the logits' scale
   * on tiny random F16 models); llama.cpp's Vulkan matmul sums whole rows in f16 by default. Default false:
   * on an H100 (Vulkan) these kernels ran slower than the f32 ones (1B F16 shapes at 4096 tokens, one
   * `bench:matmul` run: gate/up 21.9 against 28.6 TFLOP/s, ffn_down 22.8 against 29.0), so it is for GPUs
   * where f16 arithmetic pays (measure with `bench:matmul --tunings '[{}, {"half": true}]'`).
   */
  halfPrefill?: boolean;
  /**
   * Prefill: every matrix product on the GPU's matrix units (cooperative matrices, `MatmulTuning.coop`:
   * weights of any type and the activations rounded to f16 in the tiles, products summed in f32), instead
   * of the int8, f32 or f16 kernels above. `true` needs a device with working cooperative matrices
   * (`Gpu.coopMatrix`; a {@link BadFlagError} otherwise); `"emulated"` runs the same kernel with plain-WGSL
   * fragments on any GPU (slow: for tests). Default false: not run on matrix units yet (Deno 2.9.6 does not
   * offer wgpu-cooperative-matrix on the H100).
   */
  coopPrefill?: boolean | "emulated";
  /**
   * Decode attention runs as one dispatch (no partials, no reduce) while the query's position + 1 is at most
   * this many keys (see `FlashDecodeOptions.directKeys`; 0: always split). Default `DEFAULT_DIRECT_KEYS`.
   */
  decodeDirectKeys?: number;
  /**
   * Decode attention's split path merges its splits in the partial pass (the last workgroup of each KV
   * head, `FlashDecodeOptions.fusedReduce`) instead of a reduce dispatch per layer. Default true.
   */
  fusedDecodeReduce?: boolean;
  /**
   * Decode attention's splits per KV head on average (default: 32, or one per page of the context when it
   * has fewer; see `FlashDecodeOptions.splits`).
   */
  decodeSplits?: number;
  /** Decode attention's key lanes (see `FlashDecodeOptions.keyLanes`; default by head_dim). */
  decodeKeyLanes?: number;
  /** Decode attention's key lanes in direct mode (see `FlashDecodeOptions.directKeyLanes`; default as above). */
  decodeDirectKeyLanes?: number;
  /**
   * Decode attention under the full cache plans its slots from the position, reading no row lengths
   * (`FlashDecodeOptions.uniformRows`; other policies keep the lengths). Default true (on the H100 1–2%
   * faster decode than reading the lengths).
   */
  decodeUniformRows?: boolean;
  /**
   * Decode attention's subgroup operations: dot products summed by shuffles, scores in registers, key
   * lanes of a subgroup merged by shuffles (see `FlashDecodeOptions.subgroups`; `"emulated"` for tests;
   * default false).
   */
  decodeSubgroups?: boolean | "emulated";
  /**
   * Decode products: each workgroup's sums added per subgroup first (`MatvecTuning.subgroupReduce`, for
   * every role; a role's `matvecTuning` overrides it). `"emulated"` for tests. Default false.
   */
  decodeSubgroupReduce?: boolean | "emulated";
  /**
   * Prefill: the products into the residual (attn_output, ffn_down; f32, f16 and int8 alike) split K into
   * up to this many column ranges at steps of few tokens, whose tiles alone would leave most of the GPU idle
   * (see `prefillKSplits` in `src/gpu/ops/matmul.ts`); the norm after adds the parts up. A power of two; 1
   * never splits. Default {@link DEFAULT_PREFILL_K_SPLITS}.
   */
  prefillKSplits?: number;
  /**
   * Prefill: the workgroups a split step of those products aims for (fewer tiles than this split K;
   * `kSplitWorkgroups` of `MatmulOptions`). Default 256 (`SPLIT_K_WORKGROUPS` of `src/gpu/ops/matmul.ts`).
   */
  prefillKSplitWorkgroups?: number;
  /** Decode attention's steps per tile (see `FlashDecodeOptions.tileSteps`; default by head_dim). */
  decodeTileSteps?: number;
  /**
   * For benchmarks only, where the logits are then wrong: decode attention's workgroups end early
   * (`FlashDecodeOptions.ablate`), or `skip` leaves its dispatch out, to see what it costs. Default: none.
   */
  decodeAttentionAblation?: DecodeAblation | "skip";
  /**
   * For benchmarks only, where the logits are then wrong: decode leaves out the layers' ops of these roles
   * (labels without the `blk.N.` prefix, e.g. `attn_output`, `ffn_gate_up`), to see what each costs within
   * the chain. Default: none.
   */
  decodeSkipOps?: readonly string[];
  /**
   * For benchmarks only, where the logits may then be wrong (a product that adds into the residual stream
   * adds twice): decode runs the layers' ops of these roles twice in a row, to see what each costs right
   * after itself rather than after the op before it in the chain. Default: none.
   */
  decodeRepeatOps?: readonly string[];
  /**
   * What the second copy of a repeated op (`decodeRepeatOps`) is: `same-layer` runs the op itself again,
   * reading the weights it has just read (at 1B sizes a layer's weights stay in a 50 MB L2 cache, so the
   * copy reads them from the cache); `far-layer` runs the op of the same role in the layer half the model
   * away, whose weights are not in the cache then and are evicted again before that layer's own turn.
   * Default: `same-layer`.
   */
  decodeRepeatSource?: DecodeRepeatSource;
}

/** Which op the second copy of a repeated decode op is (`GpuModelOptions.decodeRepeatSource`). */
export type DecodeRepeatSource = "same-layer" | "far-layer";

/**
 * Longest rows whose decode products quantise their int8 input in each workgroup (`GpuModelOptions.int8Decode`);
 * longer rows take it from a pass of its own that quantises the step's input once (`MatvecTuning.sharedInt8`).
 * On an H100 the workgroups' own quantisation paid for the Llama-1B shapes' rows of 2048 values (1B Q4_K_M
 * decode 774 against 705 tok/s in f32 at depth 0, 652 against 569 at 4096, 489 against 441 at 32768;
 * bench/results/h100-1b-int8-decode-2048.json; with the shared pass for QKV and gate/up 895 against 926) and
 * cost more than the integer products save for rows of 4096 and more (8B Q4_K_M 191 against 226 tok/s with
 * int8 everywhere, 202.7 against 218.4 with the quantisation after the first weight loads). The shared pass
 * turned that round: 8B Q4_K_M 275.7 / 239.2 tok/s at depth 0 / 4096 with it in every role against 237.0 /
 * 210.8 in f32, and `bench:matvec` timed the 8B gate/up at 36.1 against 44.9 µs (47.3 staged), QKV 13.0
 * against 15.0, `ffn_down` 22.6 against 27.0 (bench/results/h100-int8-shared-decode.json).
 */
export const INT8_STAGED_MAX_COLS = 2048;

/**
 * Fewest output rows (gate and up, or Q, K and V, together) of a layer's decode product over rows longer
 * than {@link INT8_STAGED_MAX_COLS} that takes the shared int8 input by default; others keep the f32
 * kernels. This is the boundary of what was measured: the Llama-8B shape's layer products (4096 rows and
 * more) gained, while the 1B's `ffn_down` (2048 rows of 8192 values) and the output projection of rows over
 * 2048 values have not been timed with it yet (`--matvec-tuning '{"ffn_down": {"int8": true, "sharedInt8":
 * true}}'` and likewise `output` time them).
 */
export const SHARED_INT8_MIN_ROWS = 4096;

/**
 * Most workgroups a decode product with int8 input launches by default (`MatvecTuning.maxWorkgroups`): a
 * workgroup then takes several row groups in turn and quantises its input once for all of them. On an H100
 * this ran the 1B Q4_K_M decode at 779.5 against 760.6 tok/s (depth 0), 662.5 against 645.3 (4096) and
 * 534.9 against 523.3 (32768) in one call, the output projection's 32064 row groups gaining most; capping
 * the f32 products too ran the 8B slower (189.9 against 222.6 tok/s), and int8 input everywhere with a cap
 * of 2112 as well (206.4 against 225.0); bench/results/h100-matvec-max-workgroups.json.
 */
export const INT8_DECODE_MAX_WORKGROUPS = 1056;

/** The decode matrix-vector products of a layer (and the output projection) that take a tuning. */
export type MatvecRole = "attn_qkv" | "attn_output" | "ffn_gate_up" | "ffn_down" | "output";

/**
 * Key splits of prefill attention by default: 4 for `wgkv`, whose heads keep very different numbers of keys
 * (0–92% admitted per head), so that the short heads' work fills in while the longest run; 1 for the
 * policies with equally long heads (`full`, `window`, `sink`, and `random` on average), where the merge is
 * overhead. Measured on an H100 (8B Q4_K_M, 32K prompt, one run): wgkv 1174 tok/s with 4 splits against
 * 1157 with 1, random 1243 against 1372. On a software adapter (lavapipe) the few CPU cores are filled
 * anyway: always 1 there.
 */
export function defaultPrefillSplits(policy: string, softwareAdapter: boolean): number {
  return policy === "wgkv" && !softwareAdapter ? 4 : 1;
}

/**
 * Prompt tokens per prefill step by default: 2048 for the full cache on a GPU, so that the products of a
 * small model fill a large GPU (Llama-1B's attention output, 2048 rows, made 128 int8 tiles of 512 tokens
 * for 132 SMs); 512 for the policies with a local ring, which must hold a whole step besides the window
 * (the ring, and every decode step's scan of it, grows with the step), and on a software adapter. Measured
 * on an H100 (one run each, 4096-token prompts): 1B Q4_K_M 10790 tok/s with 512, 12182 with 2048, 12270
 * with 4096; 1B F16 8224 → 10210 (512 → 2048); 8B Q4_K_M 2016 → 2131 (2048) and 2140 (4096).
 */
export function defaultPrefillBatch(policy: string, softwareAdapter: boolean): number {
  return policy === "full" && !softwareAdapter ? 2048 : 512;
}

/**
 * Whether prefill attention stages queries and probabilities as f16 by default
 * (`GpuModelOptions.prefillHalfStaging`): on a GPU for head_dim above 64, where the halved workgroup
 * memory lets the tiling grow. On an H100 at head_dim 128 it ran at 13.4–13.7 against 11.6–12.3 TFLOP/s,
 * the 8B Q4_K_M prefill of 16384 tokens at 1506 against 1421 tok/s; at head_dim 64 at the same speed
 * (`bench/results/h100-prefill-half-staging-ab.txt`). Off on a software adapter, whose tests compare with
 * the f32 reference more tightly.
 */
export function defaultPrefillHalfStaging(headDim: number, softwareAdapter: boolean): boolean {
  return !softwareAdapter && headDim > 64;
}

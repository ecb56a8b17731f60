/**
 * The Llama forward pass on WebGPU. Weights stay in their GGUF types on the GPU; one step (a prefill
 * chunk or one decode token) is one command buffer whose commands are recorded from ops built once, so
 * decode replays the same sequence every token and reads back only the sampled token id (4 bytes).
 *
 * One step, top to bottom (M tokens at positions pos … pos+M−1):
 *
 *   x  = embed(tokens)
 *   xn = rmsnorm(x) · attn_norm[0]
 *   for each layer l:
 *     q, k, v = xn·Wq, xn·Wk, xn·Wv          (matvec for M = 1, tiled matmul otherwise)
 *     rope(q, k) at their positions         (decode: fused into the QKV matvec)
 *     wgkv: g = write_gate(k before and after RoPE) > τ   (decode: after the last layer, for all layers
 *                                                    at once, see createWriteGateLayers)
 *     append k, v to the paged KV cache of layer l   (decode: fused into the QKV matvec, for wgkv into the
 *                                                    local ring; wgkv prefill: fused into the write gate)
 *     att = attention(q, cache)             (split-K decode for M = 1, one dispatch: the last workgroup of
 *                                            each KV head merges its splits; flash prefill otherwise)
 *     x  += att·Wo ;  xn = rmsnorm(x) · ffn_norm[l]          (one fused dispatch)
 *     h   = silu(xn·Wgate) · (xn·Wup)         (one fused dispatch)
 *     x  += h·Wdown ; xn = rmsnorm(x) · (attn_norm[l+1] or output_norm)   (greedy decode, last layer:
 *                                         xn = x · output_norm, the argmax does not need the 1 / RMS)
 *   logits = xn[M−1] · Woutᵀ ;  token = argmax(logits) (one dispatch), or a draw by the GPU sampler
 *                                         (temperature, top-k, …)
 *
 * @module
 */

import type { GGUFFile } from "../gguf/reader.ts";
import {
  BadFlagError,
  DeviceError,
  firstLine,
  OutOfMemoryError,
  PrefillAbortedError,
  UnsupportedError,
} from "../errors.ts";
import { formatBytes, type Gpu } from "../gpu/device.ts";
import { GpuWeight } from "../gpu/weights.ts";
import {
  type BufferSlice,
  checkInt,
  countDispatches,
  encodeOps,
  type GpuOp,
  StepParams,
} from "../gpu/ops/op.ts";
import { createEmbed, type EmbedOp } from "../gpu/ops/embed.ts";
import { createRmsNorm } from "../gpu/ops/norm.ts";
import {
  createGateUpSwiGluInt8,
  createMatmulInt8,
  createQ8Quantize,
  createQkvInt8,
  gateUpInt8Blocker,
  int8MatmulBlocker,
  q8ActivationBytes,
  type Q8Activations,
  qkvInt8Blocker,
} from "../gpu/ops/matmul_int8.ts";
import {
  checkMaxKSplits,
  createMatmul,
  createMatvec,
  createQkvMatmul,
  type MatmulTuning,
  type MatvecTuning,
  qkvMatmulBlocker,
  SplitKMatmulOp,
  splitKOutputFloats,
} from "../gpu/ops/matmul.ts";
import { createRope } from "../gpu/ops/rope.ts";
import { createKvAppend } from "../gpu/ops/kv_append.ts";
import { qkvKvAppendBlocker } from "../gpu/ops/qkv_kv_store.ts";
import {
  createFlashDecode,
  createFlashPrefill,
  decodeArrivalsBytes,
  decodePartialsBytes,
  prefillPartialsBytes,
} from "../gpu/ops/attention.ts";
import { createSwiGlu } from "../gpu/ops/elementwise.ts";
import { createCopy } from "../gpu/ops/copy.ts";
import { type ArgmaxOp, createArgmax } from "../gpu/ops/argmax.ts";
import { createSample, SAMPLE_BEYOND_CANDIDATES, type SampleOp } from "../gpu/ops/sample.ts";
import { deviceDraws, sampleExact } from "../gpu/ops/sample_reference.ts";
import {
  canFuseGateUp,
  canFuseQkv,
  createGateUpSwiGlu,
  createGateUpSwiGluMatmul,
  createQkvMatvec,
  type FoldedNormInput,
} from "../gpu/ops/fused.ts";
import { type ChainedInt8, createChainedInt8 } from "../gpu/ops/int8_input.ts";
import type { GpuProfiler } from "../gpu/profiler.ts";
import { defaultReadbackMode, type ReadbackMode, StagingRing } from "../gpu/readback.ts";
import { KvCache } from "../kv/kv_cache.ts";
import { DualCache, type DualCacheStats } from "../kv/dual_cache.ts";
import { LOWER_CONTEXT, LOWER_DUAL_CACHE, planPoolShards } from "../kv/pool_storage.ts";
import type { KvPolicy } from "../kv/wgkv_policy.ts";
import { pageBytes, pagesForTokens } from "../kv/page_pool.ts";
import type { GateWeights } from "../gate/format.ts";
import {
  createWriteGate,
  type GateOpOptions,
  gateOutputBytes,
  gateScratchBytes,
  uploadGate,
} from "../gpu/ops/write_gate.ts";
import {
  createWriteGateLayers,
  gateKeyRowsBytes,
  gateLayersScratchBytes,
  writeGateLayersBlocker,
} from "../gpu/ops/write_gate_layers.ts";
import { writeGateAppendBlocker } from "../gpu/ops/write_gate_append.ts";
import { createWgkvAppend } from "../gpu/ops/wgkv_append.ts";
import { createWgkvPromote } from "../gpu/ops/wgkv_promote.ts";
import type { LlamaHParams } from "./hparams.ts";
import { ropeInverseFrequencies } from "./ops.ts";
import { blockTensorNames, OUTPUT, OUTPUT_NORM, ROPE_FREQS, TOKEN_EMBD } from "./tensor_names.ts";
import {
  type DecodeRepeatSource,
  DEFAULT_PREFILL_K_SPLITS,
  defaultPrefillBatch,
  defaultPrefillHalfStaging,
  defaultPrefillSplits,
  type GpuModelOptions,
  INT8_DECODE_MAX_WORKGROUPS,
  INT8_STAGED_MAX_COLS,
  type MatvecRole,
  type SampleStart,
  SHARED_INT8_MIN_ROWS,
} from "./gpu_model_options.ts";
import { kvCacheLayout } from "./kv_layout.ts";

/**
 * Most decode steps {@link GpuModel.decodeGreedy} and {@link GpuModel.decodeSampled} chain without a CPU
 * round trip.
 */
export const MAX_CHAIN = 64;

interface LayerWeights {
  attnNorm: GPUBuffer;
  ffnNorm: GPUBuffer;
  wq: GpuWeight;
  wk: GpuWeight;
  wv: GpuWeight;
  wo: GpuWeight;
  wGate: GpuWeight;
  wUp: GpuWeight;
  wDown: GpuWeight;
}

/** Activation buffers, f32 `[maxBatch][width]` unless noted. */
interface Activations {
  ids: GPUBuffer; // u32[maxBatch]
  x: GPUBuffer; // residual stream [E]
  xn: GPUBuffer; // normed [E]
  q: GPUBuffer; // [Hq·D]
  k: GPUBuffer; // [Hkv·D]
  v: GPUBuffer; // [Hkv·D]
  att: GPUBuffer; // [Hq·D]
  proj: GPUBuffer; // [E], output of Wo and Wdown
  gate: GPUBuffer; // [FF]
  up: GPUBuffer; // [FF]
  last: GPUBuffer; // [E], the last row of xn
  logits: GPUBuffer; // [V]
  partials: GPUBuffer; // split-K decode scratch
  normSums: GPUBuffer; // decode: sums of squares of a folded RMSNorm, one per producer workgroup
  arrivals: GPUBuffer; // decode attention: arrival counters of the fused split merge (zero between dispatches)
  q8?: { xq: GPUBuffer; xds: GPUBuffer }; // int8 prefill: quantised activations of the widest input
}

/** Weights on the GPU, the paged KV cache of one sequence, and the recorded ops of a step. */
export class GpuModel {
  /** Shapes of the model. */
  readonly hparams: LlamaHParams;
  /** Positions the cache holds. */
  readonly contextLength: number;
  /** Most tokens per prefill step. */
  readonly maxBatch: number;
  /**
   * When set: called during a {@link forward} of several prefill steps, after steps the GPU has done
   * (tokens done so far, tokens of the call): after each step where the gate's flags come back anyway (the
   * `wgkv` policy), else at most every {@link prefillProgressMs}, as waiting for the queue costs the GPU the
   * time it takes to record the next step. Every report is made before `forward` returns; the last step is
   * not reported.
   */
  prefillProgress?: (done: number, total: number) => void;
  /** Least time in ms between two {@link prefillProgress} reports that wait for the queue (default 250). */
  prefillProgressMs = 250;
  /**
   * When set and aborted, a {@link forward} of several prefill steps stops before its next one (once the
   * steps already queued are done) and rejects with {@link PrefillAbortedError}.
   */
  prefillSignal?: AbortSignal;
  /** Bytes of weights uploaded. */
  readonly weightBytes: number;
  /** The paged KV cache: the full cache, or the WG-KV dual cache for the other policies. */
  readonly kv: KvCache | DualCache;
  /** The KV policy in effect. */
  readonly policy: KvPolicy<GateWeights>;
  readonly #gpu: Gpu;
  /** How the prefill multiplies (for {@link describe}). */
  readonly #prefillProducts: string;
  readonly #slot: number;
  readonly #step: StepParams;
  readonly #prefillEmbed: EmbedOp;
  readonly #decodeEmbed: EmbedOp;
  readonly #prefill: GpuOp[];
  readonly #decode: GpuOp[];
  /** The decode and prefill sequences followed by the tail (built once, recorded every step). */
  readonly #decodeThenTail: GpuOp[];
  /** The same ending in logits scaled as the model defines them (the greedy tail may leave out a scale). */
  readonly #decodeThenLogits: GpuOp[];
  readonly #prefillThenTail: GpuOp[];
  /** The same with the GPU sampler in place of the argmax. */
  readonly #decodeThenSample: GpuOp[];
  readonly #prefillThenSample: GpuOp[];
  readonly #sample: SampleOp;
  /** Placeholder gate flags of one chained step (all zero). */
  readonly #noFlags: Uint32Array;
  readonly #argmax: ArgmaxOp;
  readonly #act: Activations;
  readonly #tokenReads: StagingRing;
  readonly #chainTokens: GPUBuffer;
  readonly #logitsReads: StagingRing;
  /** Gate flags of the current step, u32 [maxBatch][layers][kvHeads] (wgkv policy only). */
  readonly #flags?: GPUBuffer;
  /** Gate scores of the current step, f32 [maxBatch][layers][kvHeads] (wgkv policy only). */
  readonly #scores?: GPUBuffer;
  readonly #chainFlags?: GPUBuffer;
  readonly #flagReads?: StagingRing;
  #profiler?: GpuProfiler;
  readonly #destroy: (GPUBuffer | GpuWeight)[];
  #lastChainHostMs = 0;
  /** Most steps the next sampled chain runs (fewer after a step beyond the GPU sampler's candidates). */
  #sampledChain = MAX_CHAIN;
  /** Copies a dual cache's rewind restores (built at the first rewind that has any). */
  #rewindCopy?: GpuOp;

  private constructor(
    gpu: Gpu,
    hp: LlamaHParams,
    fields: {
      contextLength: number;
      maxBatch: number;
      weightBytes: number;
      readback: ReadbackMode;
      prefillProducts: string;
      kv: KvCache | DualCache;
      policy: KvPolicy<GateWeights>;
      flags?: GPUBuffer;
      scores?: GPUBuffer;
      step: StepParams;
      prefillEmbed: EmbedOp;
      decodeEmbed: EmbedOp;
      prefill: GpuOp[];
      decode: GpuOp[];
      tail: GpuOp[];
      sampleTail: GpuOp[];
      decodeTail: GpuOp[];
      decodeLogitsTail: GpuOp[];
      decodeSampleTail: GpuOp[];
      argmax: ArgmaxOp;
      sample: SampleOp;
      act: Activations;
      profiler?: GpuProfiler;
      owned: (GPUBuffer | GpuWeight)[];
    },
  ) {
    this.#gpu = gpu;
    this.hparams = hp;
    this.contextLength = fields.contextLength;
    this.maxBatch = fields.maxBatch;
    this.weightBytes = fields.weightBytes;
    this.#prefillProducts = fields.prefillProducts;
    this.kv = fields.kv;
    this.policy = fields.policy;
    this.#slot = fields.kv.openSequence();
    this.#step = fields.step;
    this.#prefillEmbed = fields.prefillEmbed;
    this.#decodeEmbed = fields.decodeEmbed;
    this.#prefill = fields.prefill;
    this.#decode = fields.decode;
    this.#decodeThenTail = [...fields.decode, ...fields.decodeTail];
    this.#decodeThenLogits = [...fields.decode, ...fields.decodeLogitsTail];
    this.#prefillThenTail = [...fields.prefill, ...fields.tail];
    this.#decodeThenSample = [...fields.decode, ...fields.decodeSampleTail];
    this.#prefillThenSample = [...fields.prefill, ...fields.sampleTail];
    this.#sample = fields.sample;
    this.#noFlags = new Uint32Array(hp.nLayer * hp.nHeadKV);
    this.#argmax = fields.argmax;
    this.#act = fields.act;
    this.#profiler = fields.profiler;
    this.#tokenReads = new StagingRing(gpu.device, "token staging", MAX_CHAIN * 4, 2, fields.readback);
    this.#chainTokens = gpu.buffer("chained tokens", MAX_CHAIN * 4);
    this.#logitsReads = new StagingRing(gpu.device, "logits staging", hp.nVocab * 4, 2, fields.readback);
    this.#destroy = [
      ...fields.owned,
      ...this.#tokenReads.buffers,
      ...this.#logitsReads.buffers,
      this.#chainTokens,
    ];
    if (fields.flags) {
      // Gate flags come back with each step: one step of a chain needs layers · kvHeads words.
      const stepWords = hp.nLayer * hp.nHeadKV;
      this.#flags = fields.flags;
      this.#scores = fields.scores;
      this.#chainFlags = gpu.buffer("chained gate flags", MAX_CHAIN * stepWords * 4);
      const flagBytes = Math.max(MAX_CHAIN, this.maxBatch) * stepWords * 4;
      this.#flagReads = new StagingRing(gpu.device, "gate flag staging", flagBytes, 2, fields.readback);
      this.#destroy.push(this.#chainFlags, ...this.#flagReads.buffers);
    }
  }

  /** Uploads the weights of `file` and builds every op of the forward pass. */
  static async load(gpu: Gpu, file: GGUFFile, hp: LlamaHParams, options: GpuModelOptions): Promise<GpuModel> {
    const progress = options.onProgress ?? (() => {});
    const ctx = options.contextLength;
    const policy = options.policy ?? { kind: "full" };
    const maxBatch = Math.max(
      1,
      Math.min(options.maxBatch ?? defaultPrefillBatch(policy.kind, gpu.isFallback), ctx),
    );
    if (!Number.isInteger(ctx) || ctx < 1) {
      throw new BadFlagError(`--ctx must be a positive integer, got ${ctx}`);
    }
    const E = hp.nEmbd, D = hp.headDim, Hq = hp.nHead, Hkv = hp.nHeadKV, FF = hp.nFF, V = hp.nVocab;
    const owned: (GPUBuffer | GpuWeight)[] = [];
    // Allocation failures (VRAM exhausted) surface through an error scope, checked after each phase.
    const checkMemory = async (what: string, bytes: number) => {
      const error = await gpu.device.popErrorScope();
      if (error) {
        for (const b of owned) b.destroy();
        throw new OutOfMemoryError(
          `${what}: the GPU could not allocate ${formatBytes(bytes)} (${gpu.description}): ${
            firstLine(error)
          }`,
        );
      }
    };
    // The KV cache's layout, and whether kernels can bind its pool on this GPU: refused (with the numbers)
    // before any weight is uploaded.
    const layout = kvCacheLayout(hp, policy, ctx, maxBatch, options.globalFraction, options.globalPageRun);
    planPoolShards(
      layout.pages,
      D,
      gpu.limits,
      Infinity,
      layout.kind === "full" ? LOWER_CONTEXT : LOWER_DUAL_CACHE,
    );
    gpu.device.pushErrorScope("out-of-memory");

    // Weights, streamed tensor by tensor.
    const total = file.tensors.reduce((s, t) => s + t.byteLength, 0);
    let uploaded = 0;
    let lastReport = 0;
    const report = (bytes: number) => {
      uploaded += bytes;
      const now = performance.now();
      if (now - lastReport > 1000 || uploaded === total) {
        lastReport = now;
        progress(`uploading weights: ${formatBytes(uploaded)} / ${formatBytes(total)}`);
      }
    };
    const matrix = async (name: string): Promise<GpuWeight> => {
      const info = file.tensor(name);
      const w = await GpuWeight.fromGGUF(gpu, file, info);
      owned.push(w);
      report(info.byteLength);
      return w;
    };
    const vector = async (name: string): Promise<GPUBuffer> => {
      const info = file.tensor(name);
      const data = await file.readF32(info);
      const buf = gpu.buffer(name, data.byteLength, data);
      owned.push(buf);
      report(info.byteLength);
      return buf;
    };
    const tokenEmbd = await matrix(TOKEN_EMBD);
    const layers: LayerWeights[] = [];
    for (let l = 0; l < hp.nLayer; l++) {
      const n = blockTensorNames(l);
      layers.push({
        attnNorm: await vector(n.attn_norm),
        wq: await matrix(n.attn_q),
        wk: await matrix(n.attn_k),
        wv: await matrix(n.attn_v),
        wo: await matrix(n.attn_output),
        ffnNorm: await vector(n.ffn_norm),
        wGate: await matrix(n.ffn_gate),
        wUp: await matrix(n.ffn_up),
        wDown: await matrix(n.ffn_down),
      });
    }
    const outputNorm = await vector(OUTPUT_NORM);
    const output = hp.tiedOutput ? tokenEmbd : await matrix(OUTPUT);
    const ropeFreqs = hp.hasRopeFreqs ? await file.readF32(file.tensor(ROPE_FREQS)) : undefined;
    const weightBytes = owned.reduce((s, b) => s + (b instanceof GpuWeight ? b.byteLength : b.size), 0);
    await checkMemory(`${file.path}: weights`, weightBytes);

    // KV cache, one sequence: the full cache, or the dual cache (local ring + admitted global pages).
    const kv = layout.kind === "full"
      ? await KvCache.create(gpu, layout.options)
      : await DualCache.create(gpu, layout.options);
    const dual = kv instanceof DualCache ? kv : undefined;
    const fullKv = kv instanceof KvCache ? kv : undefined;
    const gate = policy.kind === "wgkv" ? policy.gate : undefined;
    // wgkv: the write gate also stores K and V into the ring (no WG-KV append dispatch), in decode and
    // prefill alike, where the cache's bindings fit next to the gate's own.
    const appendInGate = dual !== undefined && gate !== undefined && (options.fuseWgkvAppend ?? true) &&
      writeGateAppendBlocker(gpu.limits, dual) === undefined;

    // Activations.
    gpu.device.pushErrorScope("out-of-memory");
    const f32 = (label: string, floats: number) => {
      const b = gpu.buffer(label, floats * 4);
      owned.push(b);
      return b;
    };
    // Split-K decode: 32 splits per KV head on average (the op's default). On an H100 (head_dim 128, 8 KV
    // heads) 32 splits ran faster than 64 or 128 at 32K and 128K keys (bench/results/h100-attention-kernels.json, h100-attention-splits.json).
    const splits = options.decodeSplits ?? Math.min(32, Math.ceil(ctx / 16));
    checkInt("decodeSplits", "splits", splits, 1, gpu.limits.maxComputeWorkgroupsPerDimension);
    const prefillSplits = options.prefillSplits ?? defaultPrefillSplits(policy.kind, gpu.isFallback);
    // Prefill products into the residual may split K and write their parts into act.proj: room for all.
    const maxKSplits = checkMaxKSplits("prefillKSplits", options.prefillKSplits ?? DEFAULT_PREFILL_K_SPLITS);
    const projParts = maxBatch > 1 ? maxKSplits : 1;
    const kSplitWorkgroups = options.prefillKSplitWorkgroups;
    const act: Activations = {
      ids: f32("ids", maxBatch),
      x: f32("x", maxBatch * E),
      xn: f32("xn", maxBatch * E),
      q: f32("q", maxBatch * Hq * D),
      k: f32("k", maxBatch * Hkv * D),
      v: f32("v", maxBatch * Hkv * D),
      att: f32("att", maxBatch * Hq * D),
      proj: f32("proj", projParts > 1 ? splitKOutputFloats(projParts, maxBatch, E) : maxBatch * E),
      gate: f32("gate", maxBatch * FF),
      up: f32("up", maxBatch * FF),
      last: f32("last", E),
      logits: f32("logits", V),
      // Decode and prefill attention take turns with this scratch (they never run in one submit).
      partials: f32(
        "partials",
        Math.max(
          decodePartialsBytes(splits, Hq, D),
          prefillSplits > 1 ? prefillPartialsBytes(prefillSplits, maxBatch, Hq, D) : 0,
        ) / 4,
      ),
      normSums: f32("norm sums", E),
      arrivals: f32("decode arrivals", decodeArrivalsBytes(Hkv, Hq) / 4),
    };
    const halfPrefill = (options.halfPrefill ?? false) && gpu.hasF16;
    const prefillHalfStaging = options.prefillHalfStaging ?? defaultPrefillHalfStaging(D, gpu.isFallback);
    // Cooperative-matrix prefill (options.coopPrefill) takes every prefill product, int8 ones included.
    const coopPrefill = maxBatch > 1 && coopPrefillWanted(gpu, options.coopPrefill);
    if ((options.int8Prefill ?? !gpu.isFallback) && maxBatch > 1 && !coopPrefill) {
      const bytes = q8ActivationBytes(maxBatch, Math.ceil(Math.max(E, FF, Hq * D) / 32) * 32);
      act.q8 = { xq: f32("q8 values", bytes.xq / 4), xds: f32("q8 scales", bytes.xds / 4) };
    }
    // The write gate's inputs and outputs (wgkv policy): the key before RoPE, scores and flags.
    const uploadedGate = gate && uploadGate(gpu, gate);
    // Decode with a dual cache: each layer's fused QKV stores K and V into the ring where every layer's
    // can (options.fuseWgkvAppend; an append dispatch per layer otherwise), the admissions decided by the
    // rule of the policy, or for wgkv by the gates of all layers after the last layer
    // (options.gatesAfterLayers; without them, the gate of each layer stores into the ring).
    const ringFitsQkv = dual !== undefined && (options.fuseWgkvAppend ?? true) &&
      layers.every((w) =>
        canFuseQkv(w.wq, w.wk, w.wv) && qkvKvAppendBlocker(gpu.limits, dual, w.wk, w.wv) === undefined
      );
    const gatesAfterLayers = ringFitsQkv && gate !== undefined && uploadedGate !== undefined &&
      (options.gatesAfterLayers ?? true) &&
      writeGateLayersBlocker(gpu, uploadedGate, gate, hp.nLayer) === undefined;
    const ringInQkv = ringFitsQkv && (gate === undefined || gatesAfterLayers);
    const gateBufs = gate && uploadedGate && {
      params: uploadedGate,
      kPre: f32("k before rope", maxBatch * Hkv * D),
      scores: f32("gate scores", gateOutputBytes(maxBatch, hp.nLayer, Hkv) / 4),
      flags: f32("gate flags", gateOutputBytes(maxBatch, hp.nLayer, Hkv) / 4),
      scratch: f32(
        "gate scratch",
        Math.max(
          gateScratchBytes(maxBatch, Hkv, gate.inner),
          gateScratchBytes(1, Hkv, gate.inner, true),
          gatesAfterLayers ? gateLayersScratchBytes(1, hp.nLayer, Hkv, gate.inner) : 0,
        ) / 4,
      ),
      // The keys before and after RoPE of every layer of a decode step, for the gates after the last layer.
      layerKeys: gatesAfterLayers
        ? {
          pre: f32("k before rope, all layers", hp.nLayer * gateKeyRowsBytes(1, Hkv, D) / 4),
          post: f32("k after rope, all layers", hp.nLayer * gateKeyRowsBytes(1, Hkv, D) / 4),
        }
        : undefined,
    };
    // Decode: the write gates of consecutive layers as a chain, one dispatch per layer but the last.
    const chainGates = appendInGate && dual !== undefined && hp.nLayer > 1 &&
      (options.chainWriteGates ?? true) && writeGateAppendBlocker(gpu.limits, dual, true) === undefined;
    if (gateBufs) owned.push(...gateBufs.params.buffers);
    if (gateBufs && (Hkv * D) % 4 !== 0) {
      throw new UnsupportedError(`the write gate needs kv_heads · head_dim divisible by 4 (got ${Hkv * D})`);
    }
    await checkMemory("activations", owned.reduce((s, b) => s + (b instanceof GpuWeight ? 0 : b.size), 0));
    const step = new StepParams(gpu, maxBatch);
    const one = new StepParams(gpu, 1, "one token");
    owned.push(step.buffer, one.buffer);
    const invFreq = ropeInverseFrequencies(hp.ropeDim, hp.ropeBase, ropeFreqs, hp.ropeScaling);
    // Int8 decode products (options.int8Decode): the input quantised by each workgroup for rows of up to
    // INT8_STAGED_MAX_COLS values; for longer rows by a pass of its own in the layers' products of
    // SHARED_INT8_MIN_ROWS output rows or more (what was measured), f32 otherwise.
    const int8Decode = options.int8Decode ?? !gpu.isFallback;
    const int8Tuning = (role: MatvecRole, cols: number, rows: number): MatvecTuning =>
      !int8Decode
        ? { int8: false }
        : cols <= INT8_STAGED_MAX_COLS
        ? { int8: true, maxWorkgroups: INT8_DECODE_MAX_WORKGROUPS }
        : role !== "output" && rows >= SHARED_INT8_MIN_ROWS
        ? { int8: true, sharedInt8: true }
        : { int8: false };

    // The body of a step, for a batch size (decode: 1 token, matvec + split-K attention).
    // One step's ops. `outputNorm`, when set: the last layer's ffn_down left xn = x · output_norm without
    // the division by the RMS (greedy decode's argmax does not change under a positive scale per token, so
    // its tail reads xn as it is); the tails that need the logits themselves run this op first.
    const body = (maxTokens: number, tag: string): { embed: EmbedOp; ops: GpuOp[]; outputNorm?: GpuOp } => {
      const decode = maxTokens === 1;
      // Decode folds an RMSNorm into its neighbours where the producer is a matvec in one part and the
      // consumer a fused matvec (see FoldedNormOutput in src/gpu/ops/matmul.ts).
      const foldable = (producer: GpuWeight) =>
        decode && (options.foldNorms ?? true) && producer.parts.length === 1;
      // The folded norm the next QKV reads (set by the previous layer's ffn_down), if any.
      let qkvNorm: FoldedNormInput | undefined;
      // Chained int8 input (options.decodeInt8Chain): a folded-norm producer or the fused gate/up writes the
      // next product's shared int8 input as it writes its outputs, where that product takes the shared
      // input; `qkvInt8` is what the previous layer's ffn_down wrote for the next QKV.
      const chain = decode && options.decodeInt8Chain
        ? {
          xn: createChainedInt8(gpu, `${tag}xn int8`, E, maxTokens),
          att: createChainedInt8(gpu, `${tag}attention int8`, Hq * D, maxTokens),
          h: createChainedInt8(gpu, `${tag}h int8`, FF, maxTokens),
        }
        : undefined;
      let qkvInt8: ChainedInt8 | undefined;
      // Decode with the full cache: the fused QKV also stores K and V into their pages (no append
      // dispatch) where the cache's bindings fit next to its own.
      const appendInQkv = (w: LayerWeights) =>
        decode && fullKv !== undefined && (options.fuseKvAppend ?? true) && canFuseQkv(w.wq, w.wk, w.wv) &&
        qkvKvAppendBlocker(gpu.limits, fullKv, w.wk, w.wv) === undefined;
      // Whether a role's decode product asks for the shared int8 input.
      const takesSharedInt8 = (role: MatvecRole, cols: number, rows: number) => {
        const t = tuning(role, cols, rows);
        return t.int8 === true && t.sharedInt8 === true;
      };
      const tuning = (role: MatvecRole, cols: number, rows: number): MatvecTuning => ({
        ...int8Tuning(role, cols, rows),
        ...(options.decodeSubgroupReduce ? { subgroupReduce: options.decodeSubgroupReduce } : {}),
        ...options.matvecTuning?.[role],
      });
      // Int8 prefill (options.int8Prefill): whether all of `weights` have an integer view, and the op that
      // quantises their input `x` (rows of `cols`) into act.q8, returning what the products read.
      const int8 = (...weights: GpuWeight[]) =>
        !decode && act.q8 !== undefined && weights.every((w) => int8MatmulBlocker(w) === undefined);
      // The prefill products' tuning: cooperative matrices (options.coopPrefill), or f16 products when all
      // of `weights` are F16 (options.halfPrefill).
      const half = (...weights: GpuWeight[]): MatmulTuning | undefined =>
        decode
          ? undefined
          : coopPrefill
          ? { coop: true }
          : halfPrefill && weights.every((w) => w.info.name === "F16")
          ? { half: true }
          : undefined;
      const quantize = (label: string, x: GPUBuffer, cols: number): Q8Activations => {
        const q8: Q8Activations = { xq: act.q8!.xq, xds: act.q8!.xds, cols, maxTokens };
        ops.push(createQ8Quantize(gpu, { label, x, out: q8, step }));
        return q8;
      };
      const int8Product = (
        label: string,
        weight: GpuWeight,
        x: Q8Activations,
        y: GPUBuffer,
        maxKSplits = 1,
      ) => createMatmulInt8(gpu, { label, weight, x, y, maxTokens, step, maxKSplits, kSplitWorkgroups });
      // One product; with int8 prefill, its input quantised just before it. `maxKSplits`: a prefill product
      // into act.proj may split K at steps of few tokens (its parts added up by the norm after it).
      const linear = (
        label: string,
        weight: GpuWeight,
        x: GPUBuffer,
        y: GPUBuffer,
        role: MatvecRole,
        maxKSplits = 1,
      ) => {
        if (decode) {
          return createMatvec(gpu, {
            label,
            weight,
            x,
            y,
            maxTokens,
            step,
            tuning: tuning(role, weight.cols, weight.rows),
          });
        }
        if (int8(weight)) {
          return int8Product(label, weight, quantize(`${label}_q8`, x, weight.cols), y, maxKSplits);
        }
        return createMatmul(gpu, {
          label,
          weight,
          x,
          y,
          maxTokens,
          step,
          tuning: half(weight),
          maxKSplits,
          kSplitWorkgroups,
        });
      };
      // The gather as the first RMSNorm's producer, read by the first layer's fused QKV.
      const foldEmbed = foldable(tokenEmbd) && canFuseQkv(layers[0].wq, layers[0].wk, layers[0].wv);
      const embed = createEmbed(gpu, {
        label: `${tag}token_embd`,
        weight: tokenEmbd,
        ids: act.ids,
        out: act.x,
        maxTokens,
        step,
        fold: foldEmbed ? { weight: layers[0].attnNorm, out: act.xn, sums: act.normSums } : undefined,
      });
      const ops: GpuOp[] = [embed];
      // A producer of a folded norm: x += input·Wᵀ in place, xn = x · normWeight, and the sums of squares
      // the next fused op scales by; returns what that op needs.
      const foldedProduct = (
        label: string,
        weight: GpuWeight,
        input: GPUBuffer,
        normWeight: GPUBuffer,
        role: MatvecRole,
        int8?: { in?: ChainedInt8; out?: ChainedInt8 },
      ) => {
        const producer = createMatvec(gpu, {
          label,
          weight,
          x: input,
          y: act.x,
          maxTokens,
          step,
          tuning: tuning(role, weight.cols, weight.rows),
          fold: { weight: normWeight, out: act.xn, sums: act.normSums },
          int8In: int8?.in,
          int8Out: int8?.out,
        });
        ops.push(producer);
        const norm: FoldedNormInput = {
          sums: act.normSums,
          partials: producer.normPartials,
          width: E,
          eps: hp.rmsEps,
        };
        return norm;
      };
      if (dual) ops.push(createWgkvPromote(gpu, { label: `${tag}kv_promote`, kv: dual, maxTokens }));
      // xn = rmsnorm(x) · weight, after x += proj when `addProjection` (the residual of the op before,
      // `product`, whose parts it adds up when that split K).
      const norm = (label: string, weight: GPUBuffer, addProjection: boolean, product?: GpuOp) =>
        createRmsNorm(gpu, {
          label,
          width: E,
          maxTokens,
          eps: hp.rmsEps,
          x: act.x,
          residual: addProjection ? act.proj : undefined,
          residualSplits: product instanceof SplitKMatmulOp ? product : undefined,
          weight,
          y: act.xn,
          step,
        });
      if (foldEmbed) {
        qkvNorm = { sums: act.normSums, partials: embed.normPartials, width: E, eps: hp.rmsEps };
      } else {
        ops.push(norm(`${tag}blk.0.attn_norm`, layers[0].attnNorm, false));
      }
      let outputNormOp: GpuOp | undefined;
      // Decode with a dual cache: the fused QKV stores into the ring (ringInQkv); for wgkv with the gates
      // after the last layer, each layer's keys also go to its rows of layerKeys.
      const ringStore = decode && ringInQkv;
      const layerKeys = decode && gatesAfterLayers ? gateBufs?.layerKeys : undefined;
      // What the write-gate ops of this body share (wgkv policy).
      const gateOp: GateOpOptions | undefined = gate && gateBufs && {
        label: "write_gate",
        kvHeads: Hkv,
        headDim: D,
        inner: gate.inner,
        layers: hp.nLayer,
        maxTokens,
        scores: gateBufs.scores,
        flags: gateBufs.flags,
        threshold: policy.kind === "wgkv" ? policy.threshold : undefined,
        activation: gate.activation === "silu" ? "silu" : "gelu",
        step,
        scratch: gateBufs.scratch,
      };
      const keyRows = (buffer: GPUBuffer, l: number): BufferSlice => ({
        buffer,
        offset: l * gateKeyRowsBytes(1, Hkv, D),
        size: Hkv * D * 4,
      });
      for (let l = 0; l < hp.nLayer; l++) {
        const w = layers[l];
        const foldFfnNorm = canFuseGateUp(w.wGate, w.wUp) && foldable(w.wo);
        const next = l + 1 < hp.nLayer ? layers[l + 1] : undefined;
        // ffn_down as a folded norm's producer (for the next QKV, or the output norm).
        const foldDown = foldable(w.wDown) && (!next || canFuseQkv(next.wq, next.wk, next.wv));
        // Chained int8 inputs of this layer's attn_output, gate/up and ffn_down and the next layer's QKV.
        const attInt8 = chain && D % 16 === 0 && foldFfnNorm &&
            takesSharedInt8("attn_output", w.wo.cols, w.wo.rows)
          ? chain.att
          : undefined;
        const gateUpInt8 =
          chain && foldFfnNorm && takesSharedInt8("ffn_gate_up", w.wGate.cols, 2 * w.wGate.rows)
            ? chain.xn
            : undefined;
        const downInt8 = chain && canFuseGateUp(w.wGate, w.wUp) && foldDown &&
            takesSharedInt8("ffn_down", w.wDown.cols, w.wDown.rows)
          ? chain.h
          : undefined;
        const nextQkvInt8 = chain && next && foldDown &&
            takesSharedInt8("attn_qkv", next.wq.cols, next.wq.rows + next.wk.rows + next.wv.rows)
          ? chain.xn
          : undefined;
        const p = `${tag}blk.${l}.`;
        const fusedAppend = appendInQkv(w) || ringStore;
        if (decode && canFuseQkv(w.wq, w.wk, w.wv)) {
          // One dispatch: Q, K and V rows, Q and K rotated as they are written (with the write gate, K
          // also before RoPE: the gate reads both; with the full cache, K and V also into their pages).
          ops.push(createQkvMatvec(gpu, {
            label: `${p}attn_qkv`,
            wq: w.wq,
            wk: w.wk,
            wv: w.wv,
            x: act.xn,
            q: act.q,
            k: layerKeys ? keyRows(layerKeys.post, l) : act.k,
            v: act.v,
            maxTokens,
            step,
            rope: { headDim: D, ropeDim: hp.ropeDim, invFreq, maxPosition: ctx },
            kPre: layerKeys ? keyRows(layerKeys.pre, l) : gateBufs?.kPre,
            norm: qkvNorm,
            append: ringStore && dual
              ? { kv: dual, layer: l }
              : fusedAppend && fullKv
              ? { kv: fullKv, layer: l }
              : undefined,
            tuning: tuning("attn_qkv", w.wq.cols, w.wq.rows + w.wk.rows + w.wv.rows),
            int8In: qkvInt8,
          }));
        } else {
          // The three products in one dispatch where possible (K and V alone would underfill the GPU).
          const qkv = {
            label: `${p}attn_qkv`,
            wq: w.wq,
            wk: w.wk,
            wv: w.wv,
            q: act.q,
            k: act.k,
            v: act.v,
            maxTokens,
            step,
          };
          if (int8(w.wq, w.wk, w.wv) && w.wk.cols === w.wq.cols && w.wv.cols === w.wq.cols) {
            // Int8 prefill: the input quantised once for the three products.
            const xq = quantize(`${p}attn_qkv_q8`, act.xn, w.wq.cols);
            if (qkvInt8Blocker(w.wq, w.wk, w.wv) === undefined) {
              ops.push(createQkvInt8(gpu, { ...qkv, x: xq }));
            } else {
              ops.push(int8Product(`${p}attn_q`, w.wq, xq, act.q));
              ops.push(int8Product(`${p}attn_k`, w.wk, xq, act.k));
              ops.push(int8Product(`${p}attn_v`, w.wv, xq, act.v));
            }
          } else if (!decode && !qkvMatmulBlocker(w.wq, w.wk, w.wv)) {
            ops.push(createQkvMatmul(gpu, { ...qkv, x: act.xn, tuning: half(w.wq, w.wk, w.wv) }));
          } else {
            ops.push(linear(`${p}attn_q`, w.wq, act.xn, act.q, "attn_qkv"));
            ops.push(linear(`${p}attn_k`, w.wk, act.xn, act.k, "attn_qkv"));
            ops.push(linear(`${p}attn_v`, w.wv, act.xn, act.v, "attn_qkv"));
          }
          // The gate reads the key before and after RoPE, which rotates in place: keep a copy.
          if (gateBufs) {
            ops.push(createCopy(gpu, `${p}k_pre_rope`, act.k, gateBufs.kPre, maxTokens * Hkv * D));
          }
          ops.push(createRope(gpu, {
            label: `${p}rope`,
            headDim: D,
            ropeDim: hp.ropeDim,
            invFreq,
            maxPosition: ctx,
            maxTokens,
            q: { buffer: act.q, nHeads: Hq },
            k: { buffer: act.k, nHeads: Hkv },
            step,
          }));
        }
        if (gateOp && gateBufs && !layerKeys) {
          ops.push(createWriteGate(gpu, {
            ...gateOp,
            label: `${p}write_gate`,
            layer: l,
            preK: gateBufs.kPre,
            postK: act.k,
            params: gateBufs.params.layers[l],
            append: appendInGate && dual ? { kv: dual, v: act.v } : undefined,
            chain: decode && chainGates
              ? {
                finishLater: l < hp.nLayer - 1,
                previousParams: l > 0 ? gateBufs.params.layers[l - 1] : undefined,
              }
              : undefined,
          }));
        }
        if (dual && !appendInGate && !ringStore) {
          ops.push(createWgkvAppend(gpu, {
            label: `${p}kv_append`,
            kv: dual,
            layer: l,
            maxTokens,
            k: act.k,
            v: act.v,
            gateFlags: gateBufs?.flags,
            step,
          }));
        } else if (!dual && !fusedAppend) {
          // (With a fused append, the QKV op or the write gate above has stored K and V.)
          ops.push(createKvAppend(gpu, {
            label: `${p}kv_append`,
            kv,
            layer: l,
            maxTokens,
            k: act.k,
            v: act.v,
            step,
          }));
        }
        // Attention of the step's queries over the cache (an ablation that skips it leaves none at all:
        // benchmarking only).
        const ablation = options.decodeAttentionAblation;
        const attention = {
          label: `${p}attention`,
          kv,
          layer: l,
          qHeads: Hq,
          q: act.q,
          out: act.att,
          step,
          wgkv: dual,
        };
        if (decode && ablation !== "skip") {
          ops.push(createFlashDecode(gpu, {
            ...attention,
            int8Out: attInt8,
            splits,
            partials: act.partials,
            directKeys: options.decodeDirectKeys,
            fusedReduce: options.fusedDecodeReduce,
            keyLanes: options.decodeKeyLanes,
            directKeyLanes: options.decodeDirectKeyLanes,
            uniformRows: (options.decodeUniformRows ?? true) && fullKv !== undefined,
            tileSteps: options.decodeTileSteps,
            subgroups: options.decodeSubgroups,
            arrivals: act.arrivals,
            ablate: ablation,
          }));
        } else if (!decode) {
          ops.push(createFlashPrefill(gpu, {
            ...attention,
            maxTokens,
            splits: prefillSplits,
            tiling: options.prefillTiling,
            partials: act.partials,
            subgroups: options.prefillSubgroups,
            halfStaging: prefillHalfStaging,
          }));
        }
        let gateUpNorm: FoldedNormInput | undefined;
        if (foldFfnNorm) {
          gateUpNorm = foldedProduct(`${p}attn_output`, w.wo, act.att, w.ffnNorm, "attn_output", {
            in: attInt8,
            out: gateUpInt8,
          });
        } else {
          const proj = linear(`${p}attn_output`, w.wo, act.att, act.proj, "attn_output", projParts);
          ops.push(proj);
          ops.push(norm(`${p}ffn_norm`, w.ffnNorm, true, proj));
        }
        // silu(gate) · up into act.gate, after separate gate and up products.
        const swiGlu = () =>
          createSwiGlu(gpu, { label: `${p}swiglu`, width: FF, maxTokens, gate: act.gate, up: act.up, step });
        if (int8(w.wGate, w.wUp) && gateUpInt8Blocker(w.wGate, w.wUp) === undefined) {
          // Int8 prefill: gate, up and SwiGLU in one dispatch from the quantised input.
          const xq = quantize(`${p}ffn_gate_up_q8`, act.xn, w.wGate.cols);
          ops.push(createGateUpSwiGluInt8(gpu, {
            label: `${p}ffn_gate_up`,
            gate: w.wGate,
            up: w.wUp,
            x: xq,
            out: act.gate,
            maxTokens,
            step,
          }));
        } else if (int8(w.wGate, w.wUp) && w.wUp.cols === w.wGate.cols) {
          // Int8 prefill, weights of different types: the input quantised once for the two products.
          const xq = quantize(`${p}ffn_gate_up_q8`, act.xn, w.wGate.cols);
          ops.push(int8Product(`${p}ffn_gate`, w.wGate, xq, act.gate));
          ops.push(int8Product(`${p}ffn_up`, w.wUp, xq, act.up));
          ops.push(swiGlu());
        } else if (canFuseGateUp(w.wGate, w.wUp)) {
          // One dispatch: silu(x·Wgateᵀ) · (x·Wupᵀ), x read once for both.
          ops.push(
            decode
              ? createGateUpSwiGlu(gpu, {
                label: `${p}ffn_gate_up`,
                gate: w.wGate,
                up: w.wUp,
                x: act.xn,
                out: act.gate,
                maxTokens,
                step,
                norm: gateUpNorm,
                tuning: tuning("ffn_gate_up", w.wGate.cols, 2 * w.wGate.rows),
                int8In: gateUpInt8,
                int8Out: downInt8,
              })
              : createGateUpSwiGluMatmul(gpu, {
                label: `${p}ffn_gate_up`,
                gate: w.wGate,
                up: w.wUp,
                x: act.xn,
                out: act.gate,
                maxTokens,
                step,
                tuning: half(w.wGate, w.wUp),
              }),
          );
        } else {
          ops.push(linear(`${p}ffn_gate`, w.wGate, act.xn, act.gate, "ffn_gate_up"));
          ops.push(linear(`${p}ffn_up`, w.wUp, act.xn, act.up, "ffn_gate_up"));
          ops.push(swiGlu());
        }
        qkvNorm = undefined;
        qkvInt8 = nextQkvInt8;
        if (next && foldDown) {
          qkvNorm = foldedProduct(`${p}ffn_down`, w.wDown, act.gate, next.attnNorm, "ffn_down", {
            in: downInt8,
            out: nextQkvInt8,
          });
        } else if (!next && foldDown) {
          foldedProduct(`${p}ffn_down`, w.wDown, act.gate, outputNorm, "ffn_down", { in: downInt8 });
          outputNormOp = norm(`${tag}output_norm`, outputNorm, false);
        } else {
          const proj = linear(`${p}ffn_down`, w.wDown, act.gate, act.proj, "ffn_down", projParts);
          ops.push(proj);
          ops.push(
            next
              ? norm(`${tag}blk.${l + 1}.attn_norm`, next.attnNorm, true, proj)
              : norm(`${tag}output_norm`, outputNorm, true, proj),
          );
        }
      }
      if (layerKeys && gateOp && gateBufs && dual) {
        // The write gates of all layers: their flags are first read when the step's token leaves the window.
        ops.push(createWriteGateLayers(gpu, {
          ...gateOp,
          label: `${tag}write_gates`,
          preK: layerKeys.pre,
          postK: layerKeys.post,
          params: gateBufs.params.all!,
          kv: dual,
        }));
      }
      return { embed, ops, outputNorm: outputNormOp };
    };
    // A kernel or bind group that fails validation would leave every step silently wrong: check once here.
    gpu.device.pushErrorScope("validation");
    const prefill = body(maxBatch, "");
    const decode = maxBatch === 1 ? prefill : body(1, "");

    // The tail: last row → output projection → argmax (a decode step's only row is the last: its output
    // projection reads the normed row in place, one dispatch fewer per token; greedy decode also leaves out
    // the output norm's scale, see `body`).
    const copyKernel = gpu.kernel("copy_row", { WIDTH: E, WG: 256 });
    const copyGroup = gpu.bind(copyKernel, [act.xn, act.last, step.buffer]);
    const copyLast: GpuOp = {
      label: "last_row",
      encode(pass) {
        pass.setPipeline(copyKernel.pipeline);
        pass.setBindGroup(0, copyGroup);
        pass.dispatchWorkgroups(Math.ceil(E / 256));
      },
    };
    const outputProduct = (x: GPUBuffer) =>
      createMatvec(gpu, {
        label: "output",
        weight: output,
        x,
        y: act.logits,
        maxTokens: 1,
        step: one,
        tuning: { ...int8Tuning("output", output.cols, output.rows), ...options.matvecTuning?.output },
      });
    const optional = (op?: GpuOp): GpuOp[] => op ? [op] : [];
    const outputOp = outputProduct(act.last);
    const decodeOutputOp = outputProduct(act.xn);
    const argmax = createArgmax(gpu, { label: "argmax", vocab: V, logits: act.logits });
    owned.push(argmax.tokens);
    const sample = createSample(gpu, { label: "sample", vocab: V, logits: act.logits });
    const invalid = await gpu.device.popErrorScope();
    if (invalid) {
      for (const b of owned) b.destroy();
      throw new DeviceError(`GPU model: a kernel failed validation: ${firstLine(invalid)}`);
    }
    progress(
      `GPU: ${gpu.description}; weights ${formatBytes(weightBytes)}, KV pool ${
        formatBytes(kv.pool.capacity * pageBytes(D))
      } (${policy.kind}, ${ctx} tokens)`,
    );
    return new GpuModel(gpu, hp, {
      contextLength: ctx,
      maxBatch,
      weightBytes,
      readback: options.readback ?? defaultReadbackMode(),
      prefillProducts: coopPrefill
        ? `${gpu.coopMatrix ? "" : "emulated "}cooperative matrices for every weight (f16 tiles, f32 sums)`
        : [
          act.q8 ? "8-bit integer dot products for Q8_0, Q4_0, Q4_K, Q5_K and Q6_K weights" : "",
          halfPrefill ? "f16 arithmetic for F16 weights" : "",
        ].filter((s) => s !== "").join(", ").replace(/.+/, "$& (f32 otherwise)") || "f32",
      kv,
      policy,
      flags: gateBufs?.flags,
      scores: gateBufs?.scores,
      step,
      prefillEmbed: prefill.embed,
      decodeEmbed: decode.embed,
      prefill: prefill.ops,
      decode: ablatedDecodeOps(
        decode.ops,
        options.decodeSkipOps ?? [],
        options.decodeRepeatOps ?? [],
        options.decodeRepeatSource ?? "same-layer",
      ),
      tail: [...optional(prefill.outputNorm), copyLast, outputOp, argmax],
      sampleTail: [...optional(prefill.outputNorm), copyLast, outputOp, sample],
      decodeTail: [decodeOutputOp, argmax],
      decodeLogitsTail: [...optional(decode.outputNorm), decodeOutputOp, argmax],
      decodeSampleTail: [...optional(decode.outputNorm), decodeOutputOp, sample],
      argmax,
      sample,
      act,
      profiler: options.profiler,
      owned,
    });
  }

  /**
   * Runs `tokens` at positions `pos …` (the cache is cut back to `pos` first) and returns the last token's
   * logits, its argmax when `want` is "argmax", or a token drawn as `sampling` says when `want` is
   * "sample": on the GPU (then only 4 bytes come back) unless the rules keep tokens beyond the GPU
   * sampler's candidates (`deviceDraws`), whose steps are drawn from the logits on the CPU with the same
   * random number.
   */
  async forward(tokens: number[], pos: number, want: "logits"): Promise<Float32Array>;
  async forward(tokens: number[], pos: number, want: "argmax"): Promise<number>;
  async forward(tokens: number[], pos: number, want: "sample", sampling: SampleStart): Promise<number>;
  async forward(
    tokens: number[],
    pos: number,
    want: "logits" | "argmax" | "sample",
    sampling?: SampleStart,
  ): Promise<Float32Array | number> {
    if (tokens.length === 0) throw new BadFlagError("forward: no tokens given");
    if (pos + tokens.length > this.contextLength) {
      throw new BadFlagError(
        `context overflow: position ${
          pos + tokens.length
        } exceeds the allocated context of ${this.contextLength}`,
      );
    }
    if (want === "sample" && deviceDraws(sampling!.settings, this.hparams.nVocab) === "never") {
      return this.#drawOnCpu(await this.forward(tokens, pos, "logits"), sampling!);
    }
    this.#gpu.checkAlive();
    this.#rewind(pos);
    if (want === "sample") this.#sample.start(sampling!.settings, sampling!.history, sampling!.draw);
    const picked = want === "sample" ? this.#sample.tokens : this.#argmax.tokens;
    // Progress (prefillProgress): a step whose gate flags came back is done and reported at once; otherwise,
    // every prefillProgressMs, the step just submitted is reported once the queue has done it. (Deno's
    // onSubmittedWorkDone blocks until the queue is idle, and the GPU then waits for the next step to be
    // recorded: so not after every step.)
    const report = this.prefillProgress;
    let previous: { done: Promise<void>; tokens: number } | undefined;
    let lastProgress = performance.now();
    let result: GPUBuffer | undefined; // the staging buffer of the last step's token or logits
    const reportPrevious = async () => {
      if (!previous || !report) return;
      await previous.done;
      report(previous.tokens, tokens.length);
    };
    for (let start = 0; start < tokens.length; start += this.maxBatch) {
      // A device lost during a long prompt stops it at the next step, with the loss's reason.
      if (start > 0) this.#gpu.checkAlive();
      if (start > 0 && this.prefillSignal?.aborted) {
        await this.#gpu.device.queue.onSubmittedWorkDone();
        throw new PrefillAbortedError(start);
      }
      const chunk = tokens.slice(start, start + this.maxBatch);
      const isLast = start + chunk.length === tokens.length;
      const decode = chunk.length === 1;
      (decode ? this.#decodeEmbed : this.#prefillEmbed).writeIds(chunk);
      this.#step.set(chunk.length, pos + start);
      this.#beginStep(chunk.length, pos + start);
      const encoder = this.#gpu.device.createCommandEncoder();
      const ops = !isLast
        ? (decode ? this.#decode : this.#prefill)
        : want === "sample"
        ? (decode ? this.#decodeThenSample : this.#prefillThenSample)
        : want === "logits"
        ? (decode ? this.#decodeThenLogits : this.#prefillThenTail)
        : (decode ? this.#decodeThenTail : this.#prefillThenTail);
      encodeOps(encoder, ops, this.#profiler);
      if (isLast) {
        result = await (want === "logits" ? this.#logitsReads : this.#tokenReads).take();
        if (want === "logits") {
          encoder.copyBufferToBuffer(this.#act.logits, 0, result, 0, this.hparams.nVocab * 4);
        } else encoder.copyBufferToBuffer(picked, 0, result, 0, 4);
      }
      const flagBytes = chunk.length * this.hparams.nLayer * this.hparams.nHeadKV * 4;
      const flagStaging = this.#flagReads && await this.#flagReads.take();
      if (flagStaging) encoder.copyBufferToBuffer(this.#flags!, 0, flagStaging, 0, flagBytes);
      this.#profiler?.resolve(encoder);
      this.#gpu.device.queue.submit([encoder.finish()]);
      if (this.#profiler) await this.#profiler.collect();
      // The dual cache mirrors each token's admission on the CPU (it plans promotions from it).
      this.#endStep(
        flagStaging ? new Uint32Array(await this.#read(this.#flagReads!, flagStaging, flagBytes)) : undefined,
      );
      if (report && !isLast && flagStaging) {
        report(start + chunk.length, tokens.length);
      } else if (report && !isLast && performance.now() - lastProgress >= this.prefillProgressMs) {
        lastProgress = performance.now();
        const done = this.#gpu.device.queue.onSubmittedWorkDone();
        await reportPrevious();
        previous = { done, tokens: start + chunk.length };
      }
    }
    const range = want === "logits"
      ? await this.#read(this.#logitsReads, result!, this.hparams.nVocab * 4)
      : await this.#read(this.#tokenReads, result!, 4);
    await reportPrevious();
    if (want === "logits") return new Float32Array(range);
    const token = new Uint32Array(range)[0];
    if (token !== SAMPLE_BEYOND_CANDIDATES) return token;
    // The logits of the last token are still in their buffer: read them and draw on the CPU.
    return this.#drawOnCpu(await this.#readLastLogits(), sampling!);
  }

  /** Reads the logits the last step left in their buffer. */
  async #readLastLogits(): Promise<Float32Array> {
    const bytes = this.hparams.nVocab * 4;
    const staging = await this.#logitsReads.take();
    const encoder = this.#gpu.device.createCommandEncoder();
    encoder.copyBufferToBuffer(this.#act.logits, 0, staging, 0, bytes);
    this.#gpu.device.queue.submit([encoder.finish()]);
    return new Float32Array(await this.#read(this.#logitsReads, staging, bytes));
  }

  /** The draw of `sampling`'s first step from `logits`, on the CPU (the GPU sampler's rules, uncapped). */
  #drawOnCpu(logits: Float32Array, sampling: SampleStart): number {
    return sampleExact(logits, sampling.settings, sampling.history, sampling.draw);
  }

  /**
   * Dispatches one greedy decode step records at position `pos` (decode attention takes the direct or
   * the split form by position): what a step costs in fixed per-dispatch overhead. Sets the step's
   * parameters to that position (every step sets its own before it runs).
   */
  decodeDispatches(pos: number): number {
    checkInt("decodeDispatches", "pos", pos, 0, this.contextLength - 1);
    this.#step.set(1, pos);
    return countDispatches(this.#decodeThenTail);
  }

  /**
   * CPU time the last chained decode ({@link decodeGreedy}, {@link decodeSampled}) spent encoding and
   * submitting its steps, in ms (profiler readbacks left out). Close to the chain's whole time means the
   * CPU, not the GPU, set the pace.
   */
  get lastChainHostMs(): number {
    return this.#lastChainHostMs;
  }

  /**
   * Greedy decode of `count` tokens (≤ {@link GpuModel.maxChain}) after feeding `first` at `pos`: each step's
   * argmax is copied straight into the next step's token id on the GPU, so the steps are submitted back
   * to back and only one readback (all `count` ids) waits for the GPU. Positions past `pos + count − 1`
   * are left out of the cache. Returns the ids, one per step.
   */
  decodeGreedy(first: number, pos: number, count: number): Promise<number[]> {
    return this.#decodeChain("decodeGreedy", first, pos, count, this.#argmax.tokens, this.#decodeThenTail);
  }

  /**
   * Sampled decode of up to `count` tokens (≤ {@link GpuModel.maxChain}) after feeding `first` at `pos`,
   * like {@link decodeGreedy} but each step's token is drawn on the GPU as `sampling` says; the draw index
   * and the recent tokens of the repetition penalty advance on the GPU, so the steps chain the same way.
   * A step whose rules keep tokens beyond the GPU sampler's candidates (`deviceDraws`) is drawn from its
   * logits on the CPU, with the same random number, and ends the chain: fewer than `count` ids may come
   * back (at least one).
   */
  async decodeSampled(first: number, pos: number, count: number, sampling: SampleStart): Promise<number[]> {
    const draws = deviceDraws(sampling.settings, this.hparams.nVocab);
    if (draws === "never") return [await this.forward([first], pos, "sample", sampling)];
    this.#sample.start(sampling.settings, sampling.history, sampling.draw);
    const tokens = await this.#decodeChain(
      "decodeSampled",
      first,
      pos,
      draws === "always" ? count : Math.min(count, this.#sampledChain),
      this.#sample.tokens,
      this.#decodeThenSample,
    );
    const beyond = tokens.indexOf(SAMPLE_BEYOND_CANDIDATES);
    // Chains as long as the last one went well: after a step beyond the candidates the next chain is no
    // longer than the steps before it, so that settings that often need the CPU waste few GPU steps.
    this.#sampledChain = beyond < 0 ? Math.min(2 * this.#sampledChain, MAX_CHAIN) : Math.max(1, beyond);
    if (beyond < 0) return tokens;
    // Its logits are in their buffer when it was the chain's last step; otherwise the steps after it fed an
    // id that is no token: run step `beyond` again for its logits.
    const drawn = tokens.slice(0, beyond);
    const fed = beyond === 0 ? first : drawn[beyond - 1];
    const logits = beyond === tokens.length - 1
      ? await this.#readLastLogits()
      : await this.forward([fed], pos + beyond, "logits");
    const history = [...sampling.history, ...drawn];
    drawn.push(
      this.#drawOnCpu(logits, { settings: sampling.settings, history, draw: sampling.draw + beyond }),
    );
    return drawn;
  }

  /** Chains `count` decode steps, each feeding the token `picked` holds after `ops` into the next. */
  async #decodeChain(
    name: string,
    first: number,
    pos: number,
    count: number,
    picked: GPUBuffer,
    ops: GpuOp[],
  ): Promise<number[]> {
    if (!Number.isInteger(count) || count < 1 || count > this.maxChain) {
      throw new BadFlagError(`${name}: count must be an integer in [1, ${this.maxChain}], got ${count}`);
    }
    if (pos + count > this.contextLength) {
      throw new BadFlagError(
        `context overflow: position ${pos + count} exceeds the allocated context of ${this.contextLength}`,
      );
    }
    this.#gpu.checkAlive();
    this.#rewind(pos);
    this.#decodeEmbed.writeIds([first]);
    const stepWords = this.hparams.nLayer * this.hparams.nHeadKV;
    const tokenStaging = await this.#tokenReads.take();
    const flagStaging = this.#flagReads && await this.#flagReads.take();
    const t0 = performance.now();
    let profilerMs = 0;
    for (let i = 0; i < count; i++) {
      // Queue writes land before the submit that follows them, so each step sees its own position.
      this.#step.set(1, pos + i);
      this.#beginStep(1, pos + i);
      const encoder = this.#gpu.device.createCommandEncoder();
      if (i > 0) encoder.copyBufferToBuffer(picked, 0, this.#act.ids, 0, 4);
      encodeOps(encoder, ops, this.#profiler);
      encoder.copyBufferToBuffer(picked, 0, this.#chainTokens, 4 * i, 4);
      if (this.#flags) {
        encoder.copyBufferToBuffer(this.#flags, 0, this.#chainFlags!, 4 * stepWords * i, 4 * stepWords);
      }
      if (i === count - 1) {
        encoder.copyBufferToBuffer(this.#chainTokens, 0, tokenStaging, 0, 4 * count);
        if (flagStaging) {
          encoder.copyBufferToBuffer(this.#chainFlags!, 0, flagStaging, 0, 4 * stepWords * count);
        }
      }
      this.#profiler?.resolve(encoder);
      this.#gpu.device.queue.submit([encoder.finish()]);
      if (this.#profiler) {
        const p0 = performance.now();
        await this.#profiler.collect();
        profilerMs += performance.now() - p0;
      }
      // A chained step's gate flags are not known yet: record placeholders, corrected below. Nothing of the
      // chain leaves the ring before then (the ring is longer than a chain).
      this.#endStep(this.#flags ? this.#noFlags : undefined);
    }
    this.#lastChainHostMs = performance.now() - t0 - profilerMs;
    const tokens = Array.from(new Uint32Array(await this.#read(this.#tokenReads, tokenStaging, 4 * count)));
    if (flagStaging && this.kv instanceof DualCache) {
      const flags = new Uint32Array(await this.#read(this.#flagReads!, flagStaging, 4 * stepWords * count));
      this.kv.rewriteFlags(this.#slot, pos, flags);
    }
    return tokens;
  }

  /**
   * Cuts the cache back to `pos` tokens. The dual cache goes back exactly by up to its `maxRewind` tokens
   * (what a stop string or end of generation leaves of a chain decoded ahead) or restarts from 0; other
   * positions before its end are refused, since the tokens it dropped cannot be restored.
   */
  #rewind(pos: number): void {
    const kv = this.kv;
    if (kv instanceof DualCache) {
      const held = kv.tokens(this.#slot);
      if (held === pos) return;
      if (pos === 0) {
        kv.resetSequence(this.#slot);
        return;
      }
      if (!this.canResumeAt(pos)) {
        throw new BadFlagError(
          `the ${this.policy.kind} KV cache holds ${held} tokens and cannot resume at position ${pos} ` +
            `(only at 0 or ${kv.earliestRewind(this.#slot)} … ${held}: tokens it dropped ` +
            "cannot be restored; start again from position 0)",
        );
      }
      if (kv.rewind(this.#slot, pos) > 0) {
        // The plan just queued copies the promoted tokens back into the ring, before any later step's.
        this.#rewindCopy ??= createWgkvPromote(this.#gpu, { label: "kv_rewind", kv });
        const encoder = this.#gpu.device.createCommandEncoder();
        encodeOps(encoder, [this.#rewindCopy]);
        this.#gpu.device.queue.submit([encoder.finish()]);
      }
    } else if (kv.length(this.#slot, 0, 0) > pos) {
      kv.truncate(this.#slot, pos);
    }
  }

  /**
   * Whether a call may start at `pos` with the cache holding exactly the tokens fed before it: the full
   * cache at any position up to its end, the dual cache at 0 and from its `earliestRewind` to its end.
   */
  canResumeAt(pos: number): boolean {
    const kv = this.kv;
    const held = kv instanceof DualCache ? kv.tokens(this.#slot) : kv.length(this.#slot, 0, 0);
    if (!Number.isInteger(pos) || pos < 0 || pos > held) return false;
    return !(kv instanceof DualCache) || pos === 0 || pos >= kv.earliestRewind(this.#slot);
  }

  /**
   * Most tokens the cache can always take back from its end: unlimited for the full cache, the dual cache's
   * `maxRewind` (at least a prefill step). A chain no longer than this plus one leaves a resumable cache
   * wherever its caller stops using its tokens.
   */
  get maxRewind(): number {
    return this.kv instanceof DualCache ? this.kv.maxRewind : Infinity;
  }

  /** Reserves cache room for `n` tokens at `pos` and queues the block tables. */
  #beginStep(n: number, pos: number): void {
    const kv = this.kv;
    if (kv instanceof DualCache) {
      kv.beginStep(this.#slot, n, pos);
    } else {
      kv.append(this.#slot, n);
      kv.selectSequence(this.#slot);
      kv.flush();
    }
  }

  /** Records the step's admissions (dual cache only; `flags` for the wgkv policy). */
  #endStep(flags?: Uint32Array): void {
    if (this.kv instanceof DualCache) this.kv.endStep(this.#slot, flags);
  }

  /**
   * Most steps {@link decodeGreedy} and {@link decodeSampled} chain: {@link MAX_CHAIN}, and with the gate no more than the ring
   * holds (a chained token's flags are read back after the chain, so none may leave the ring before).
   */
  get maxChain(): number {
    return this.#flags && this.kv instanceof DualCache ? Math.min(MAX_CHAIN, this.kv.ringTokens) : MAX_CHAIN;
  }

  /**
   * Whether the cache can resume at any earlier position (false for the dual cache, which goes back only
   * {@link maxRewind} tokens, see {@link canResumeAt}).
   */
  get rewindable(): boolean {
    return !(this.kv instanceof DualCache);
  }

  /** Labels of the ops a decode step records, in order (for benchmarks and tests: which ops run). */
  get decodeLabels(): string[] {
    return this.#decode.map((op) => op.label);
  }

  /** KV memory in use against a full cache of the same tokens, and admissions per layer and head. */
  kvStats(): KvUsage {
    const kv = this.kv;
    if (kv instanceof DualCache) {
      const s = kv.stats(this.#slot);
      return {
        policy: this.policy.kind,
        tokens: s.tokens,
        usedBytes: s.usedBytes,
        fullBytes: s.fullBytes,
        dual: s,
      };
    }
    const tokens = kv.length(this.#slot, 0, 0);
    const bytes = this.hparams.nLayer * this.hparams.nHeadKV * pagesForTokens(tokens) *
      pageBytes(this.hparams.headDim);
    return { policy: "full", tokens, usedBytes: bytes, fullBytes: bytes };
  }

  /** Copies `bytes` of `staging` (taken from `ring`, written by submitted work) back once the queue reaches it. */
  async #read(ring: StagingRing, staging: GPUBuffer, bytes: number): Promise<ArrayBuffer> {
    let out: ArrayBuffer;
    try {
      out = await ring.read(staging, bytes);
    } catch (e) {
      throw await this.#gpu.readFailure(e, "the result");
    }
    this.#gpu.checkAlive();
    return out;
  }

  /**
   * The write gate's scores of the last step's `tokens` tokens (the last prefill chunk, or 1 after a decode
   * step), f32 `[tokens][layers][kvHeads]`, after the clamp; wgkv policy only. For calibrating a threshold.
   */
  async gateScores(tokens: number): Promise<Float32Array> {
    if (!this.#scores) {
      throw new BadFlagError("gateScores: the model runs no write gate (policy is not wgkv)");
    }
    checkInt("gateScores", "tokens", tokens, 1, this.maxBatch);
    const bytes = tokens * this.hparams.nLayer * this.hparams.nHeadKV * 4;
    const staging = await this.#flagReads!.take();
    const encoder = this.#gpu.device.createCommandEncoder();
    encoder.copyBufferToBuffer(this.#scores, 0, staging, 0, bytes);
    this.#gpu.device.queue.submit([encoder.finish()]);
    return new Float32Array(await this.#read(this.#flagReads!, staging, bytes));
  }

  /** Times every op of the following steps with `profiler` (one compute pass per op), or stops timing. */
  setProfiler(profiler: GpuProfiler | undefined): void {
    this.#profiler = profiler;
  }

  /**
   * For benchmarks of decode at a context depth: marks positions `0 … n−1` as cached without computing
   * them (their keys and values are whatever the pool pages hold), so attention reads `n` keys per head.
   */
  reserveContext(n: number): void {
    if (!Number.isInteger(n) || n < 0 || n >= this.contextLength) {
      throw new BadFlagError(`reserveContext: ${n} is outside the context of ${this.contextLength}`);
    }
    const kv = this.kv;
    if (kv instanceof DualCache) {
      throw new UnsupportedError(
        `reserveContext: only the full cache can skip positions (policy ${this.policy.kind})`,
      );
    }
    kv.truncate(this.#slot, 0);
    if (n > 0) kv.append(this.#slot, n);
  }

  /** Lines describing memory use. */
  describe(): string[] {
    const pool = this.kv.pool.capacity;
    return [
      `backend: webgpu on ${this.#gpu.description}${this.#gpu.hasF16 ? " (shader-f16)" : ""}`,
      `weights: ${formatBytes(this.weightBytes)} on the GPU`,
      `prefill: steps of ${this.maxBatch} tokens, products ${this.#prefillProducts}`,
      `matrix units: ${this.#gpu.coopMatrixNote}`,
      `KV cache: ${this.policy.kind}, paged, ${pool} pages of 16 tokens, pool ${
        formatBytes(pool * pageBytes(this.hparams.headDim))
      } for ${this.contextLength} tokens`,
    ];
  }

  /** Frees every GPU buffer of the model. */
  destroy(): void {
    for (const b of this.#destroy) b.destroy();
    this.#sample.destroy();
    this.kv.destroy();
  }
}

/** KV memory of a sequence: in use, and what a full cache of the same tokens would take. */
export interface KvUsage {
  /** The policy. */
  policy: string;
  /** Tokens the sequence has seen. */
  tokens: number;
  /** Bytes of the pages it holds. */
  usedBytes: number;
  /** Bytes a full cache of the same tokens would hold. */
  fullBytes: number;
  /** Dual-cache details (admitted fraction per layer and head, global tokens). */
  dual?: DualCacheStats;
}

/**
 * The decode ops with the layers' ops of the roles in `skip` left out and those in `repeat` run twice in a
 * row, the second copy being the op itself or, with `source` = `far-layer`, the same role's op of the layer
 * half the model away (`GpuModelOptions.decodeSkipOps`, `decodeRepeatOps`, `decodeRepeatSource`: timing
 * only). A role is an op's label without its `blk.N.` prefix.
 */
function ablatedDecodeOps(
  ops: GpuOp[],
  skip: readonly string[],
  repeat: readonly string[],
  source: DecodeRepeatSource,
): GpuOp[] {
  const layerOf = (op: GpuOp) => Number(/^blk\.(\d+)\./.exec(op.label)?.[1] ?? -1);
  const role = (op: GpuOp) => op.label.replace(/^blk\.\d+\./, "");
  const layers = Math.max(0, ...ops.map(layerOf)) + 1;
  const copyOf = (op: GpuOp): GpuOp => {
    if (source === "same-layer" || layerOf(op) < 0) return op;
    const far = (layerOf(op) + Math.floor(layers / 2)) % layers;
    return ops.find((o) => layerOf(o) === far && role(o) === role(op)) ?? op;
  };
  return ops.filter((op) => !skip.includes(role(op))).flatMap((op) =>
    repeat.includes(role(op)) ? [op, copyOf(op)] : [op]
  );
}

/**
 * Whether prefill products run on cooperative matrices for `GpuModelOptions.coopPrefill` = `wanted`:
 * `true` on a device without working ones is a {@link BadFlagError} saying why.
 */
function coopPrefillWanted(gpu: Gpu, wanted: boolean | "emulated" | undefined): boolean {
  if (wanted === "emulated") return true;
  if (wanted !== true) return false;
  if (gpu.coopMatrix === undefined) {
    throw new BadFlagError(
      `--coop-prefill (coopPrefill): this GPU has no working cooperative matrices (${
        gpu.coopMatrixNote || "not offered"
      })`,
    );
  }
  return true;
}

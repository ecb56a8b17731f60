/**
 * Sampling on the GPU (`wgsl/sample.wgsl`): turns a logits row into a token id without reading the logits
 * back, with the CPU sampler's rules and order (repetition penalty → top-k → top-p → min-p → temperature →
 * draw). Five dispatches: penalty and block statistics, a three-level radix select of the k-th largest
 * penalised logit, the gather of the k candidates, and one workgroup that sorts them, cuts them and draws.
 *
 * Candidates are capped at {@link SAMPLE_CANDIDATE_CAP}: with top-k off (or larger than the cap) the draw
 * is among the cap's most likely tokens, the top-p mass measured against the whole vocabulary. Where
 * neither top-p nor min-p cuts among them, the rules keep tokens beyond the cap: the draw then gives
 * {@link SAMPLE_BEYOND_CANDIDATES} instead of a token, and the caller draws that step exactly from the
 * logits (`sampleExact` in `sample_reference.ts`, the same random number); where no rule cuts at all
 * (top-k, top-p and min-p off) it weighs the whole vocabulary itself, in id order. The random number of
 * draw `i` is a hash of (seed, i) ({@link sampleUniform}), so the same seed and history give the same
 * tokens; the recent tokens the penalty looks at live in a ring on the GPU that each draw appends to, so
 * steps can be chained without the CPU.
 *
 * @module
 */

import type { Gpu } from "../device.ts";
import {
  bindNumbered,
  type BufferSlice,
  ceilDiv,
  checkInt,
  checkSlice,
  checkWorkgroups,
  type GpuOp,
} from "./op.ts";

/** Most candidates the GPU sampler sorts: top-k above this, or off, keeps this many. */
export const SAMPLE_CANDIDATE_CAP = 1024;

/**
 * What the GPU draw gives instead of a token when the rules keep tokens beyond its capped candidates (top-k
 * off or above {@link SAMPLE_CANDIDATE_CAP}, and no top-p or min-p cut among them): that step must be drawn
 * from the logits on the CPU.
 */
export const SAMPLE_BEYOND_CANDIDATES = 0xffffffff;

const BLOCK = 4096;
const HIST_WORDS = 5121;
const LOW_BINS = 1024;
const STATE_HEADER = 4;

/** The sampling settings the GPU op applies (the same meaning as the CPU sampler's options). */
export interface SampleSettings {
  /** Softmax temperature; 0 takes the largest penalised logit. */
  temperature: number;
  /** Keep the k most likely tokens; 0 disables (then the candidate cap applies). */
  topK: number;
  /** Keep the shortest prefix with cumulative probability ≥ p; 1 disables. */
  topP: number;
  /** Drop tokens with probability < p · the most likely one's; 0 disables. */
  minP: number;
  /** Divide positive (multiply negative) logits of recent tokens by this; 1 disables. */
  repeatPenalty: number;
  /** How many recent tokens the penalty looks at. */
  repeatLastN: number;
  /** Seed of the draws (any integer; taken modulo 2³²). */
  seed: number;
}

/** Options of {@link createSample}. */
export interface SampleOptions {
  /** Name for the profiler and errors. */
  label: string;
  /** Logits in the row (the vocabulary size). */
  vocab: number;
  /** The logits, f32[vocab] (read only). */
  logits: BufferSlice;
}

/** The sampling op; call {@link SampleOp.start} before the first step of a run of draws. */
export interface SampleOp extends GpuOp {
  /** u32[1]: the token id of the last draw, or {@link SAMPLE_BEYOND_CANDIDATES}. */
  readonly tokens: GPUBuffer;
  /**
   * Queues the settings, the recent tokens (only the last `repeatLastN` count) and the index of the next
   * draw; each encoded step then draws once, appends its token to the history and counts the draw.
   */
  start(settings: SampleSettings, history: readonly number[], draw: number): void;
  /** The state buffer: u32 draw index, history count, history head, history capacity, then the ring. */
  readonly state: GPUBuffer;
  /** Frees the op's buffers. */
  destroy(): void;
}

/** The uniform values of one setting, as the kernel reads them (f32 fields already rounded). */
export interface SampleParams {
  /** Candidates kept. */
  k: number;
  /** Power of two ≥ k (the sort's size). */
  sortSize: number;
  /** Whether top-p's mass is relative to the whole vocabulary (top-k off or above the cap). */
  fullMass: boolean;
  /** Whether the candidates are capped below the vocabulary (they may lack tokens the rules keep). */
  truncated: boolean;
  /**
   * Whether no rule cuts at all (top-k, top-p and min-p off) over a vocabulary beyond the cap: the draw then
   * weighs every token, in id order, instead of the candidates.
   */
  wholeVocabulary: boolean;
  /** Seed as u32. */
  seed: number;
  /** Top-p, f32. */
  topP: number;
  /** Whether min-p applies. */
  minPOn: boolean;
  /** log(min-p) rounded to f32 (0 when off). */
  logMinP: number;
  /** 1 / temperature rounded to f32 (0 for temperature 0). */
  invTemp: number;
  /** Whether the repetition penalty applies. */
  penaltyOn: boolean;
  /** The penalty, f32. */
  penalty: number;
  /** 1 / penalty, f32. */
  invPenalty: number;
}

/** Derives the kernel's parameters from `settings` for a vocabulary of `vocab` tokens. */
export function sampleParams(settings: SampleSettings, vocab: number): SampleParams {
  const { temperature, topK, topP, minP, repeatPenalty, repeatLastN } = settings;
  let k: number, fullMass: boolean;
  if (temperature === 0) {
    k = 1;
    fullMass = false;
  } else if (topK > 0 && topK <= SAMPLE_CANDIDATE_CAP) {
    k = Math.min(topK, vocab);
    fullMass = false;
  } else {
    k = Math.min(SAMPLE_CANDIDATE_CAP, vocab);
    fullMass = true;
  }
  let sortSize = 1;
  while (sortSize < k) sortSize *= 2;
  const f = Math.fround;
  return {
    k,
    sortSize,
    fullMass,
    truncated: fullMass && k < vocab,
    wholeVocabulary: fullMass && k < vocab && (topK === 0 || topK >= vocab) && topP >= 1 && !(minP > 0),
    seed: settings.seed >>> 0,
    topP: f(topP),
    minPOn: minP > 0,
    logMinP: minP > 0 ? f(Math.log(minP)) : 0,
    invTemp: temperature === 0 ? 0 : f(1 / temperature),
    penaltyOn: repeatPenalty !== 1 && repeatLastN > 0,
    penalty: f(repeatPenalty),
    invPenalty: f(1 / repeatPenalty),
  };
}

/** The uniform in [0, 1) of draw `index` under `seed` (24 random bits), as `wgsl/sample.wgsl` computes it. */
export function sampleUniform(seed: number, index: number): number {
  const h = mix32((mix32((seed ^ 0x6a09e667) >>> 0) + Math.imul(index >>> 0, 0x9e3779b9)) >>> 0);
  return (h >>> 8) / 16777216;
}

function mix32(v: number): number {
  let x = v >>> 0;
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x21f0aaad) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x735a2d97) >>> 0;
  return (x ^ (x >>> 15)) >>> 0;
}

/** Builds the sampling op over one logits row; see {@link SampleOptions}. */
export function createSample(gpu: Gpu, options: SampleOptions): SampleOp {
  const { label, vocab, logits } = options;
  checkInt(label, "vocab", vocab, 1, 2 ** 31 - 1);
  checkSlice(label, "logits", logits, vocab * 4);
  const nBlocks = ceilDiv(vocab, BLOCK);
  checkWorkgroups(gpu, label, nBlocks);
  const constants = { VOCAB: vocab, N_BLOCKS: nBlocks };
  const kernels = ["scan_block", "select_mid", "select_low", "gather", "draw"].map((entry) =>
    gpu.kernel("sample", constants, {}, entry)
  );
  const paramsData = new ArrayBuffer(48);
  const paramsBuf = gpu.uniform(`${label}.params`, new Uint8Array(paramsData));
  const tokens = gpu.buffer(`${label}.tokens`, 4);
  const work = gpu.buffer(`${label}.work`, vocab * 4);
  const partials = gpu.buffer(`${label}.partials`, nBlocks * 8);
  const hist = gpu.buffer(`${label}.hist`, HIST_WORDS * 4);
  const blockLow = gpu.buffer(`${label}.block_low`, nBlocks * LOW_BINS * 4);
  const candidates = gpu.buffer(`${label}.candidates`, SAMPLE_CANDIDATE_CAP * 4);
  let historyCap = 64;
  let state = gpu.buffer(`${label}.state`, (STATE_HEADER + historyCap) * 4);
  // The bindings each entry point uses (automatic layouts hold only those), in binding order from 0.
  const used = [[0, 1, 2, 3, 4, 5], [0, 3, 5], [0, 3, 5, 6], [0, 3, 5, 6, 7], [0, 1, 3, 4, 5, 7, 8]];
  const makeGroups = () => {
    const byBinding: BufferSlice[] = [
      paramsBuf,
      state,
      logits,
      work,
      partials,
      hist,
      blockLow,
      candidates,
      tokens,
    ];
    return kernels.map((kernel, e) => bindNumbered(gpu, kernel, used[e].map((b) => [b, byBinding[b]])));
  };
  let groups = makeGroups();
  const dispatches = [nBlocks, nBlocks, nBlocks, nBlocks, 1];
  return {
    label,
    tokens,
    get state() {
      return state;
    },
    start(settings: SampleSettings, history: readonly number[], draw: number): void {
      checkInt(label, "repeatLastN", settings.repeatLastN, 0);
      checkInt(label, "draw", draw, 0, 2 ** 32 - 1);
      const p = sampleParams(settings, vocab);
      const u32 = new Uint32Array(paramsData);
      const f32 = new Float32Array(paramsData);
      u32[0] = p.k;
      u32[1] = p.sortSize;
      u32[2] = p.fullMass ? 1 : 0;
      u32[3] = p.seed;
      f32[4] = p.topP;
      u32[5] = p.minPOn ? 1 : 0;
      f32[6] = p.logMinP;
      f32[7] = p.invTemp;
      u32[8] = p.penaltyOn ? 1 : 0;
      f32[9] = p.penalty;
      f32[10] = p.invPenalty;
      u32[11] = p.wholeVocabulary ? 2 : p.truncated ? 1 : 0;
      gpu.device.queue.writeBuffer(paramsBuf, 0, paramsData);
      const cap = p.penaltyOn ? settings.repeatLastN : 0;
      if (cap > historyCap) {
        state.destroy();
        historyCap = cap;
        state = gpu.buffer(`${label}.state`, (STATE_HEADER + historyCap) * 4);
        groups = makeGroups();
      }
      const recent = history.slice(Math.max(0, history.length - cap));
      const data = new Uint32Array(STATE_HEADER + recent.length);
      data.set([draw, recent.length, cap === 0 ? 0 : recent.length % cap, cap]);
      data.set(recent, STATE_HEADER);
      gpu.device.queue.writeBuffer(state, 0, data);
    },
    encode(pass: GPUComputePassEncoder): void {
      for (let e = 0; e < kernels.length; e++) {
        pass.setPipeline(kernels[e].pipeline);
        pass.setBindGroup(0, groups[e]);
        pass.dispatchWorkgroups(dispatches[e]);
      }
    },
    destroy(): void {
      for (const b of [paramsBuf, tokens, work, partials, hist, blockLow, candidates, state]) b.destroy();
    },
  };
}

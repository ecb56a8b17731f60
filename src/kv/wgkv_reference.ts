/**
 * CPU references of WG-KV attention, the oracle for the GPU kernels and the dual cache:
 *
 * - the attention mask of each policy: a query at position q attends key kv ≤ q iff q − kv < W (the local
 *   window of the last W keys, the query's own token included) or the key is kept beyond the window:
 *   always (`full`), never (`window`), for kv < S (`sink`), or iff its admission flag for that KV head is
 *   set (`wgkv`; the caller decides the flags, {@link admittedFlags} does it from gate scores with the
 *   strict rule g > τ);
 * - dense masked attention with GQA ({@link wgkvAttention}), accumulated in f64;
 * - an exact simulation of the dual cache's bookkeeping ({@link WgkvCacheModel}): per (layer, KV head) a
 *   ring of W slots with one flag each and a global list; prefill writes the last min(N, W) tokens to the
 *   ring and the admitted tokens of [0, N − W) to global; a decode step first promotes the token leaving
 *   the window (if flagged), then writes the new token into its slot.
 *
 * @module
 */

import { BadFlagError } from "../errors.ts";

/** Which tokens a query may attend besides its local window. Flags are `[kvHeads][length]`, 1 = admitted. */
export type MaskPolicy =
  | { kind: "full" }
  | { kind: "window"; window: number }
  | { kind: "sink"; window: number; sinks: number }
  | { kind: "wgkv"; window: number; flags: Uint8Array; length: number };

/** Admission flags from gate scores `[kvHeads][n]`: 1 iff score > threshold (strict), same layout. */
export function admittedFlags(scores: Float32Array, threshold: number): Uint8Array {
  const out = new Uint8Array(scores.length);
  for (let i = 0; i < scores.length; i++) out[i] = scores[i] > threshold ? 1 : 0;
  return out;
}

/** Whether a query at position `query` attends the key at position `key` of KV head `head`. */
export function attends(policy: MaskPolicy, head: number, query: number, key: number): boolean {
  if (key > query || key < 0) return false;
  if (policy.kind === "full") return true;
  if (query - key < policy.window) return true;
  switch (policy.kind) {
    case "window":
      return false;
    case "sink":
      return key < policy.sinks;
    case "wgkv":
      if (key >= policy.length) {
        throw new BadFlagError(`WG-KV mask: no admission flag for position ${key} (${policy.length} given)`);
      }
      return policy.flags[head * policy.length + key] !== 0;
  }
}

/** The positions (ascending) that a query at `query` attends on KV head `head`. */
export function attendedPositions(policy: MaskPolicy, head: number, query: number): number[] {
  const out: number[] = [];
  for (let key = 0; key <= query; key++) if (attends(policy, head, query, key)) out.push(key);
  return out;
}

/** Inputs of {@link wgkvAttention}. */
export interface WgkvAttentionInput {
  /** Queries after RoPE, `[nTokens − queryStart][qHeads][headDim]` (rows for positions queryStart…nTokens−1). */
  q: Float32Array;
  /** Keys after RoPE, `[nTokens][kvHeads][headDim]`. */
  k: Float32Array;
  /** Values, `[nTokens][kvHeads][headDim]`. */
  v: Float32Array;
  /** Tokens of K and V (positions 0…nTokens−1). */
  nTokens: number;
  /** Query heads (a multiple of kvHeads; query head i reads KV head ⌊i / (qHeads/kvHeads)⌋). */
  qHeads: number;
  /** KV heads. */
  kvHeads: number;
  /** Values per head. */
  headDim: number;
  /** The mask. */
  policy: MaskPolicy;
  /** Position of the first query row (default 0: one query per token). */
  queryStart?: number;
  /** Score scale (default 1/√headDim). */
  scale?: number;
}

/** Masked softmax attention, `[nTokens − queryStart][qHeads][headDim]`, f64 accumulation, one f32 rounding. */
export function wgkvAttention(input: WgkvAttentionInput): Float32Array {
  const { q, k, v, nTokens: N, qHeads, kvHeads, headDim: D, policy } = input;
  const start = input.queryStart ?? 0;
  const scale = input.scale ?? 1 / Math.sqrt(D);
  if (qHeads % kvHeads !== 0) {
    throw new BadFlagError(`WG-KV attention: ${qHeads} query heads, ${kvHeads} KV heads`);
  }
  if (!(start >= 0 && start < N)) {
    throw new BadFlagError(`WG-KV attention: queryStart ${start} outside [0, ${N})`);
  }
  const rows = N - start;
  if (q.length < rows * qHeads * D || k.length < N * kvHeads * D || v.length < N * kvHeads * D) {
    throw new BadFlagError("WG-KV attention: q, k or v is shorter than its shape");
  }
  const group = qHeads / kvHeads;
  const out = new Float32Array(rows * qHeads * D);
  const scores = new Float64Array(N);
  const acc = new Float64Array(D);
  for (let r = 0; r < rows; r++) {
    const pos = start + r;
    for (let qh = 0; qh < qHeads; qh++) {
      const kh = Math.floor(qh / group);
      const qo = (r * qHeads + qh) * D;
      const keys = attendedPositions(policy, kh, pos);
      let max = -Infinity;
      for (let j = 0; j < keys.length; j++) {
        const ko = (keys[j] * kvHeads + kh) * D;
        let s = 0;
        for (let d = 0; d < D; d++) s += q[qo + d] * k[ko + d];
        scores[j] = s * scale;
        if (scores[j] > max) max = scores[j];
      }
      let sum = 0;
      acc.fill(0);
      for (let j = 0; j < keys.length; j++) {
        const p = Math.exp(scores[j] - max);
        sum += p;
        const vo = (keys[j] * kvHeads + kh) * D;
        for (let d = 0; d < D; d++) acc[d] += p * v[vo + d];
      }
      for (let d = 0; d < D; d++) out[qo + d] = acc[d] / sum;
    }
  }
  return out;
}

/** Shape of a {@link WgkvCacheModel}. */
export interface WgkvCacheShape {
  /** Decoder layers. */
  layers: number;
  /** KV heads per layer. */
  kvHeads: number;
  /** Values per head (for byte counts). */
  headDim: number;
  /** Local window W (ring slots per head). */
  window: number;
  /** Tokens per page of the global cache (for the paged byte count; default 16). */
  pageTokens?: number;
}

/** A token promoted from a ring slot to its head's global list by a decode step. */
export interface Promotion {
  /** Layer. */
  layer: number;
  /** KV head. */
  head: number;
  /** Ring slot it left. */
  slot: number;
  /** Its absolute position. */
  position: number;
}

/** Memory held by the cache, as counted by {@link WgkvCacheModel.stats}. */
export interface WgkvCacheStats {
  /** Tokens seen so far (the position of the next token). */
  tokens: number;
  /** Tokens held, summed over layers and KV heads (ring + global). */
  heldTokens: number;
  /** What a full cache would hold: tokens × layers × KV heads. */
  fullTokens: number;
  /** Bytes of K and V for the held tokens. */
  kvBytes: number;
  /** Bytes of K and V of a full cache. */
  fullKvBytes: number;
  /** Bytes of the pages in use: every ring in full (W per head) plus ⌈global/pageTokens⌉ pages per head. */
  pagedKvBytes: number;
}

/**
 * The dual cache's bookkeeping on the CPU, exactly as the reference implementation does it: all layers and
 * heads share the ring pointer (`localLength` while filling, then `localPtr`, the oldest slot, next to be
 * overwritten). It holds positions and flags only, no K/V data.
 */
export class WgkvCacheModel {
  /** Layers, heads, head size, window, page size. */
  readonly shape: Required<WgkvCacheShape>;
  #ringPosition: Int32Array; // [layers][kvHeads][window], −1 = empty
  #ringFlag: Uint8Array; // [layers][kvHeads][window]
  #global: number[][]; // [layers · kvHeads] → positions, in promotion order
  #tokens = 0;
  #localLength = 0;
  #localPtr = 0;

  /** An empty cache of `shape`. */
  constructor(shape: WgkvCacheShape) {
    const s = { pageTokens: 16, ...shape };
    for (const [name, v] of Object.entries(s)) {
      if (!Number.isInteger(v) || v < 1) {
        throw new BadFlagError(`WG-KV cache model: ${name} ${v} is not an integer ≥ 1`);
      }
    }
    this.shape = s;
    const slots = s.layers * s.kvHeads * s.window;
    this.#ringPosition = new Int32Array(slots).fill(-1);
    this.#ringFlag = new Uint8Array(slots);
    this.#global = Array.from({ length: s.layers * s.kvHeads }, () => []);
  }

  /** Tokens written so far (the position the next token gets). */
  get tokens(): number {
    return this.#tokens;
  }

  /** Ring slots in use (≤ W). */
  get localLength(): number {
    return this.#localLength;
  }

  /** Oldest ring slot once the ring is full: the next one a decode step overwrites. */
  get localPtr(): number {
    return this.#localPtr;
  }

  #checkFlags(flags: readonly Uint8Array[], perHead: number, what: string): void {
    const { layers, kvHeads } = this.shape;
    if (flags.length !== layers || flags.some((f) => f.length !== kvHeads * perHead)) {
      throw new BadFlagError(
        `WG-KV cache model: ${what} needs ${layers} flag arrays of ${kvHeads * perHead}`,
      );
    }
  }

  /**
   * Prefill of `n` tokens (positions 0…n−1) into an empty cache. `flags[layer]` is `[kvHeads][n]`.
   * Ring slot s ← token n − min(n, W) + s; global ← admitted tokens of [0, n − W) in order.
   */
  prefill(flags: readonly Uint8Array[], n: number): void {
    if (this.#tokens !== 0) {
      throw new BadFlagError("WG-KV cache model: prefill into a cache that is not empty");
    }
    if (!Number.isInteger(n) || n < 1) throw new BadFlagError(`WG-KV cache model: prefill of ${n} tokens`);
    this.#checkFlags(flags, n, "prefill");
    const { layers, kvHeads, window: W } = this.shape;
    const local = Math.min(n, W);
    for (let l = 0; l < layers; l++) {
      for (let h = 0; h < kvHeads; h++) {
        const f = flags[l].subarray(h * n, (h + 1) * n);
        const ring = (l * kvHeads + h) * W;
        for (let s = 0; s < local; s++) {
          this.#ringPosition[ring + s] = n - local + s;
          this.#ringFlag[ring + s] = f[n - local + s] ? 1 : 0;
        }
        const global = this.#global[l * kvHeads + h];
        for (let t = 0; t < n - W; t++) if (f[t]) global.push(t);
      }
    }
    this.#tokens = n;
    this.#localLength = local;
    this.#localPtr = 0;
  }

  /**
   * One decode step: the token at position {@link tokens}, with `flags[layer]` `[kvHeads]`. When the ring
   * is full, the token in slot `localPtr` leaves the window first and is promoted where flagged; then the
   * new token takes that slot. Returns the promotions, layer-major.
   */
  decode(flags: readonly Uint8Array[]): Promotion[] {
    this.#checkFlags(flags, 1, "decode");
    const { layers, kvHeads, window: W } = this.shape;
    const promotions: Promotion[] = [];
    const full = this.#localLength === W;
    const slot = full ? this.#localPtr : this.#localLength;
    for (let l = 0; l < layers; l++) {
      for (let h = 0; h < kvHeads; h++) {
        const at = (l * kvHeads + h) * W + slot;
        if (full && this.#ringFlag[at]) {
          const position = this.#ringPosition[at];
          this.#global[l * kvHeads + h].push(position);
          promotions.push({ layer: l, head: h, slot, position });
        }
        this.#ringPosition[at] = this.#tokens;
        this.#ringFlag[at] = flags[l][h] ? 1 : 0;
      }
    }
    if (full) this.#localPtr = (this.#localPtr + 1) % W;
    else this.#localLength++;
    this.#tokens++;
    return promotions;
  }

  /** Ring of (layer, head) in slot order: position (−1 when empty) and flag of each slot. */
  ring(layer: number, head: number): { position: number; flag: boolean }[] {
    const { kvHeads, window: W } = this.shape;
    const base = (layer * kvHeads + head) * W;
    return Array.from({ length: W }, (_, s) => ({
      position: this.#ringPosition[base + s],
      flag: this.#ringFlag[base + s] !== 0,
    }));
  }

  /** Global positions of (layer, head), in the order they were written (ascending). */
  globalPositions(layer: number, head: number): readonly number[] {
    return this.#global[layer * this.shape.kvHeads + head];
  }

  /** Every position (layer, head) holds, ascending: what the current token's query attends. */
  heldPositions(layer: number, head: number): number[] {
    const ring = this.ring(layer, head).map((s) => s.position).filter((p) => p >= 0);
    return [...this.globalPositions(layer, head), ...ring].sort((a, b) => a - b);
  }

  /** Number of tokens (layer, head) holds. */
  heldTokens(layer: number, head: number): number {
    return this.#global[layer * this.shape.kvHeads + head].length + this.#localLength;
  }

  /** Tokens and bytes held, vs a full cache, with K and V of `bytesPerValue` each (default 2, f16). */
  stats(bytesPerValue = 2): WgkvCacheStats {
    const { layers, kvHeads, headDim, window: W, pageTokens } = this.shape;
    const perToken = 2 * headDim * bytesPerValue;
    let held = 0, pagedTokens = 0;
    for (let l = 0; l < layers; l++) {
      for (let h = 0; h < kvHeads; h++) {
        const g = this.#global[l * kvHeads + h].length;
        held += g + this.#localLength;
        pagedTokens += Math.ceil(W / pageTokens) * pageTokens + Math.ceil(g / pageTokens) * pageTokens;
      }
    }
    const fullTokens = this.#tokens * layers * kvHeads;
    return {
      tokens: this.#tokens,
      heldTokens: held,
      fullTokens,
      kvBytes: held * perToken,
      fullKvBytes: fullTokens * perToken,
      pagedKvBytes: pagedTokens * perToken,
    };
  }
}

/**
 * The CPU reference Llama: every weight dequantised to f32 and one token at a time through plain loops
 * from {@link ./ops.ts}. Meant to be read top to bottom (in the spirit of llama2.c's `run.c`) and to be
 * obviously right: it is the oracle of the GPU path and a slow fallback backend.
 *
 * @module
 */

import { BadFlagError, OutOfMemoryError } from "../errors.ts";
import type { GGUFFile } from "../gguf/reader.ts";
import { hparamsFromGGUF, type LlamaHParams } from "./hparams.ts";
import { attendOne, matvec, rmsnorm, rope, ropeInverseFrequencies, swiglu } from "./ops.ts";
import { blockTensorNames, OUTPUT, OUTPUT_NORM, ROPE_FREQS, TOKEN_EMBD } from "./tensor_names.ts";

/** The f32 weights of one transformer block (matrices row-major, `rows × cols`). */
interface BlockWeights {
  attnNorm: Float32Array; // [nEmbd]
  wq: Float32Array; // [nHead·headDim rows × nEmbd]
  wk: Float32Array; // [nHeadKV·headDim rows × nEmbd]
  wv: Float32Array; // [nHeadKV·headDim rows × nEmbd]
  wo: Float32Array; // [nEmbd rows × nHead·headDim]
  ffnNorm: Float32Array; // [nEmbd]
  wGate: Float32Array; // [nFF rows × nEmbd]
  wUp: Float32Array; // [nFF rows × nEmbd]
  wDown: Float32Array; // [nEmbd rows × nFF]
}

/** Positions added at a time when the KV cache grows (it doubles beyond this). */
const KV_GROWTH_MIN = 64;

/** A Llama forward pass on the CPU in f32, with its own KV cache (one sequence). */
export class ReferenceModel {
  /** Shapes and constants of the model. */
  readonly hparams: LlamaHParams;
  readonly #tokenEmbd: Float32Array; // [nVocab rows × nEmbd]
  readonly #blocks: BlockWeights[];
  readonly #outputNorm: Float32Array; // [nEmbd]
  readonly #output: Float32Array; // [nVocab rows × nEmbd]; the embedding table when tied
  readonly #invFreq: Float32Array; // [ropeDim / 2]
  readonly #maxPositions: number;

  // KV cache: per layer, position-major [capacity × nHeadKV·headDim] keys (after RoPE) and values.
  #keys: Float32Array[] = [];
  #values: Float32Array[] = [];
  #capacity = 0;
  #length = 0;

  // Scratch activations, reused every step.
  readonly #x: Float32Array;
  readonly #xb: Float32Array;
  readonly #q: Float32Array;
  readonly #k: Float32Array;
  /**
   * Called with every key as it is computed: layer, position, the key before and after RoPE
   * ([nHeadKV][headDim] each; the arrays are reused, copy what you keep). For checking write gates.
   */
  keyObserver?: (layer: number, pos: number, preRope: Float32Array, postRope: Float32Array) => void;
  readonly #v: Float32Array;
  readonly #att: Float32Array;
  readonly #gate: Float32Array;
  readonly #up: Float32Array;

  private constructor(
    hparams: LlamaHParams,
    maxPositions: number,
    weights: {
      tokenEmbd: Float32Array;
      blocks: BlockWeights[];
      outputNorm: Float32Array;
      output: Float32Array;
      ropeFreqs?: Float32Array;
    },
  ) {
    const hp = hparams;
    this.hparams = hp;
    this.#maxPositions = maxPositions;
    this.#tokenEmbd = weights.tokenEmbd;
    this.#blocks = weights.blocks;
    this.#outputNorm = weights.outputNorm;
    this.#output = weights.output;
    this.#invFreq = ropeInverseFrequencies(hp.ropeDim, hp.ropeBase, weights.ropeFreqs, hp.ropeScaling);
    this.#x = new Float32Array(hp.nEmbd);
    this.#xb = new Float32Array(hp.nEmbd);
    this.#q = new Float32Array(hp.nHead * hp.headDim);
    this.#k = new Float32Array(hp.nHeadKV * hp.headDim);
    this.#v = new Float32Array(hp.nHeadKV * hp.headDim);
    this.#att = new Float32Array(hp.nHead * hp.headDim);
    this.#gate = new Float32Array(hp.nFF);
    this.#up = new Float32Array(hp.nFF);
  }

  /**
   * Validates `file`'s hyper-parameters and dequantises all its weights to f32. `contextLength` (default
   * and at most the model's) caps the positions the KV cache may hold.
   */
  static async load(file: GGUFFile, contextLength?: number): Promise<ReferenceModel> {
    const hp = hparamsFromGGUF(file);
    if (contextLength !== undefined && (!Number.isInteger(contextLength) || contextLength < 1)) {
      throw new BadFlagError(`context length ${contextLength} is not a positive integer`);
    }
    const maxPositions = Math.min(contextLength ?? hp.contextLength, hp.contextLength);
    const read = (name: string) => Promise.resolve(file.readF32(file.tensor(name)));
    const blocks: BlockWeights[] = [];
    for (let layer = 0; layer < hp.nLayer; layer++) {
      const n = blockTensorNames(layer);
      blocks.push({
        attnNorm: await read(n.attn_norm),
        wq: await read(n.attn_q),
        wk: await read(n.attn_k),
        wv: await read(n.attn_v),
        wo: await read(n.attn_output),
        ffnNorm: await read(n.ffn_norm),
        wGate: await read(n.ffn_gate),
        wUp: await read(n.ffn_up),
        wDown: await read(n.ffn_down),
      });
    }
    const tokenEmbd = await read(TOKEN_EMBD);
    return new ReferenceModel(hp, maxPositions, {
      tokenEmbd,
      blocks,
      outputNorm: await read(OUTPUT_NORM),
      output: hp.tiedOutput ? tokenEmbd : await read(OUTPUT),
      ropeFreqs: hp.hasRopeFreqs ? await read(ROPE_FREQS) : undefined,
    });
  }

  /** Most positions the KV cache may hold (the context length it was loaded with). */
  get contextLength(): number {
    return this.#maxPositions;
  }

  /** Number of positions currently held in the KV cache. */
  get length(): number {
    return this.#length;
  }

  /** Empties the KV cache (keeps its memory). */
  reset(): void {
    this.#length = 0;
  }

  /** Runs `token` at position `pos` and returns the logits over the vocabulary (a new array). */
  forward(token: number, pos: number): Float32Array<ArrayBuffer> {
    return this.logits(this.forwardHidden(token, pos));
  }

  /** The output projection of a final (normed) hidden state: logits over the vocabulary (a new array). */
  logits(hidden: Float32Array): Float32Array<ArrayBuffer> {
    const out = new Float32Array(this.hparams.nVocab);
    matvec(out, this.#output, hidden);
    return out;
  }

  /**
   * Runs `token` at position `pos` and returns the final hidden state after the output RMSNorm (a new
   * array of nEmbd values). Positions must follow on from the cache: `pos` ≤ {@link ReferenceModel.length}; a smaller
   * `pos` drops the cached positions from `pos` on (rewinding).
   */
  forwardHidden(token: number, pos: number): Float32Array<ArrayBuffer> {
    const hp = this.hparams;
    if (!Number.isInteger(token) || token < 0 || token >= hp.nVocab) {
      throw new BadFlagError(`token id ${token} is outside the vocabulary (0..${hp.nVocab - 1})`);
    }
    if (!Number.isInteger(pos) || pos < 0 || pos > this.#length) {
      throw new BadFlagError(`position ${pos} does not follow the ${this.#length} cached positions`);
    }
    if (pos >= this.#maxPositions) {
      throw new OutOfMemoryError(
        `context overflow: position ${pos} is past the context length ${this.#maxPositions}`,
      );
    }
    this.#ensureCapacity(pos + 1);
    this.#length = pos + 1;

    const { nEmbd, nHead, nHeadKV, headDim, rmsEps } = hp;
    const kvDim = nHeadKV * headDim;
    const groupSize = nHead / nHeadKV;
    const scale = 1 / Math.sqrt(headDim);
    const x = this.#x, xb = this.#xb, q = this.#q, k = this.#k, v = this.#v, att = this.#att;

    // The residual stream starts as the token's embedding row.
    x.set(this.#tokenEmbd.subarray(token * nEmbd, (token + 1) * nEmbd));

    for (let layer = 0; layer < hp.nLayer; layer++) {
      const w = this.#blocks[layer];

      // Attention: normalise, project to q/k/v, rotate q and k by position.
      rmsnorm(xb, x, w.attnNorm, rmsEps);
      matvec(q, w.wq, xb);
      matvec(k, w.wk, xb);
      matvec(v, w.wv, xb);
      const preRope = this.keyObserver ? Float32Array.from(k) : undefined;
      rope(q, nHead, headDim, pos, this.#invFreq);
      rope(k, nHeadKV, headDim, pos, this.#invFreq);
      if (preRope) this.keyObserver!(layer, pos, preRope, k);

      // Append this position's key and value to the cache.
      const keys = this.#keys[layer], values = this.#values[layer];
      keys.set(k, pos * kvDim);
      values.set(v, pos * kvDim);

      // Each query head attends over positions 0..pos of the KV head its group shares (GQA).
      for (let h = 0; h < nHead; h++) {
        const kvHead = Math.floor(h / groupSize);
        attendOne(
          att,
          q,
          keys,
          values,
          pos + 1,
          headDim,
          kvDim,
          kvHead * headDim,
          scale,
          h * headDim,
          h * headDim,
        );
      }

      // Output projection, then back into the residual stream.
      matvec(xb, w.wo, att);
      for (let i = 0; i < nEmbd; i++) x[i] += xb[i];

      // Feed-forward: normalise, SwiGLU(gate, up), project down, residual.
      rmsnorm(xb, x, w.ffnNorm, rmsEps);
      matvec(this.#gate, w.wGate, xb);
      matvec(this.#up, w.wUp, xb);
      swiglu(this.#gate, this.#up);
      matvec(xb, w.wDown, this.#gate);
      for (let i = 0; i < nEmbd; i++) x[i] += xb[i];
    }

    const hidden = new Float32Array(nEmbd);
    rmsnorm(hidden, x, this.#outputNorm, rmsEps);
    return hidden;
  }

  /** Grows the per-layer K/V arrays to hold at least `positions` positions (doubling, capped by context). */
  #ensureCapacity(positions: number): void {
    if (positions <= this.#capacity) return;
    const hp = this.hparams;
    const kvDim = hp.nHeadKV * hp.headDim;
    const capacity = Math.min(this.#maxPositions, Math.max(positions, 2 * this.#capacity, KV_GROWTH_MIN));
    for (let layer = 0; layer < hp.nLayer; layer++) {
      const keys = new Float32Array(capacity * kvDim);
      const values = new Float32Array(capacity * kvDim);
      if (this.#capacity > 0) {
        keys.set(this.#keys[layer].subarray(0, this.#length * kvDim));
        values.set(this.#values[layer].subarray(0, this.#length * kvDim));
      }
      this.#keys[layer] = keys;
      this.#values[layer] = values;
    }
    this.#capacity = capacity;
  }
}

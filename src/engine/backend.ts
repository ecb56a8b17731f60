/**
 * What the engine needs from a model implementation: run tokens through the network at given positions,
 * keeping their keys and values, and hand back either the last logits or the argmax. The CPU reference
 * and the WebGPU model both implement it.
 *
 * @module
 */

import type { LlamaHParams } from "../model/hparams.ts";
import type { KvUsage } from "../model/gpu_model.ts";
import type { SampleStart } from "../model/gpu_model_options.ts";

/** Progress of a long prompt: `done` of its `total` tokens have run. */
export type PrefillProgress = (done: number, total: number) => void;

/** A forward-pass implementation with its own KV cache for one sequence. */
export interface ModelBackend {
  /** Which implementation this is. */
  readonly kind: "cpu" | "webgpu";
  /** Shapes of the model. */
  readonly hparams: LlamaHParams;
  /** Most positions this backend's cache holds. */
  readonly contextLength: number;
  /**
   * Runs `tokens` at positions `pos … pos + tokens.length − 1` (cache entries at and after `pos` are
   * replaced) and returns the logits of the last one.
   */
  forward(tokens: number[], pos: number): Promise<Float32Array>;
  /** Like {@link ModelBackend.forward} but returns only the argmax token id (no logits transfer on the GPU). */
  forwardArgmax(tokens: number[], pos: number): Promise<number>;
  /**
   * Optional: greedy decode of `count` tokens after feeding `first` at `pos`, chained on the device
   * without a round trip per token; returns one id per step. Positions after the last step are not cached.
   */
  decodeGreedy?(first: number, pos: number, count: number): Promise<number[]>;
  /**
   * Optional: like {@link ModelBackend.forwardArgmax}, but the token is drawn on the device as `sampling` says (its
   * own random stream: a hash of the seed and the draw index), without transferring the logits.
   */
  forwardSample?(tokens: number[], pos: number, sampling: SampleStart): Promise<number>;
  /**
   * Optional: like {@link ModelBackend.decodeGreedy}, with each step's token drawn on the device as `sampling`
   * says; may return fewer ids than `count` (at least one), e.g. after a step the device could not draw.
   */
  decodeSampled?(first: number, pos: number, count: number, sampling: SampleStart): Promise<number[]>;
  /** Most steps {@link ModelBackend.decodeGreedy} and {@link ModelBackend.decodeSampled} take at once. */
  readonly maxChain?: number;
  /**
   * Optional, set by the caller around a long forward: called as parts of the tokens are done (tokens done
   * so far, tokens of the call; a backend may skip parts), never for a call that runs in one step, nor for
   * its last part.
   */
  prefillProgress?: PrefillProgress;
  /**
   * Optional, set by the caller around a long forward: once aborted, the call stops before its next part
   * (never before its first) and rejects with a `PrefillAbortedError`.
   */
  prefillSignal?: AbortSignal;
  /** Whether a call may start before the cached positions (false: only at 0 or at the end). Default true. */
  readonly rewindable?: boolean;
  /**
   * Optional: whether a call may start at `pos` with the cache holding exactly the tokens fed before it (a
   * cache that goes back only a few tokens says where). Without it, {@link ModelBackend.rewindable} decides.
   */
  canResumeAt?(pos: number): boolean;
  /** KV memory in use against a full cache of the same tokens (and per-head admissions for WG-KV). */
  kvUsage?(): KvUsage;
  /** Human-readable lines about memory use (weights, KV cache) for `--verbose`/`info`. */
  describe(): string[];
  /** Releases the backend's resources. */
  dispose(): void;
}

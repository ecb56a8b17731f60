/**
 * The WebGPU backend: {@link GpuModel} behind the {@link ModelBackend} interface.
 *
 * @module
 */

import type { GGUFFile } from "../gguf/reader.ts";
import type { Gpu } from "../gpu/device.ts";
import type { LlamaHParams } from "../model/hparams.ts";
import { GpuModel, type KvUsage } from "../model/gpu_model.ts";
import type { GpuModelOptions, SampleStart } from "../model/gpu_model_options.ts";
import type { ModelBackend, PrefillProgress } from "./backend.ts";

/** {@link ModelBackend} over {@link GpuModel}. */
export class GpuBackend implements ModelBackend {
  /** Always "webgpu". */
  readonly kind = "webgpu" as const;
  /** Shapes of the model. */
  readonly hparams: LlamaHParams;
  /** Positions the cache holds. */
  readonly contextLength: number;

  private constructor(readonly model: GpuModel) {
    this.hparams = model.hparams;
    this.contextLength = model.contextLength;
  }

  /** Uploads `file` to `gpu` with a KV cache of `contextLength` tokens. */
  static async load(
    gpu: Gpu,
    file: GGUFFile,
    hparams: LlamaHParams,
    options: Pick<
      GpuModelOptions,
      | "contextLength"
      | "maxBatch"
      | "onProgress"
      | "profiler"
      | "policy"
      | "globalFraction"
      | "int8Prefill"
      | "int8Decode"
      | "halfPrefill"
      | "coopPrefill"
    >,
  ): Promise<GpuBackend> {
    return new GpuBackend(await GpuModel.load(gpu, file, hparams, options));
  }

  /** See {@link ModelBackend.prefillProgress}: here as {@link GpuModel.prefillProgress} says. */
  get prefillProgress(): PrefillProgress | undefined {
    return this.model.prefillProgress;
  }
  set prefillProgress(report: PrefillProgress | undefined) {
    this.model.prefillProgress = report;
  }

  /** See {@link ModelBackend.prefillSignal}: seen before each prefill step but the first. */
  get prefillSignal(): AbortSignal | undefined {
    return this.model.prefillSignal;
  }
  set prefillSignal(signal: AbortSignal | undefined) {
    this.model.prefillSignal = signal;
  }

  /** Runs the tokens; returns the last logits. */
  forward(tokens: number[], pos: number): Promise<Float32Array> {
    return this.model.forward(tokens, pos, "logits");
  }

  /** Runs the tokens; returns the argmax computed on the GPU. */
  forwardArgmax(tokens: number[], pos: number): Promise<number> {
    return this.model.forward(tokens, pos, "argmax");
  }

  /** Runs the tokens; returns a token drawn on the GPU (its own random stream, see {@link SampleStart}). */
  forwardSample(tokens: number[], pos: number, sampling: SampleStart): Promise<number> {
    return this.model.forward(tokens, pos, "sample", sampling);
  }

  /**
   * Most greedy or sampled steps chained per readback: the model's, and with a dual cache no more than it
   * can take back plus one, so that a chain stopped after its first token still leaves a cache that
   * resumes where the session is.
   */
  get maxChain(): number {
    return Math.max(1, Math.min(this.model.maxChain, this.model.maxRewind + 1));
  }

  /** Greedy steps chained on the GPU (one readback for all). */
  decodeGreedy(first: number, pos: number, count: number): Promise<number[]> {
    return this.model.decodeGreedy(first, pos, count);
  }

  /** Sampled steps chained on the GPU (one readback for all). */
  decodeSampled(first: number, pos: number, count: number, sampling: SampleStart): Promise<number[]> {
    return this.model.decodeSampled(first, pos, count, sampling);
  }

  /**
   * Whether the cache can resume at any earlier position (not the dual cache: dropped keys are gone, it goes
   * back only a few tokens, see {@link canResumeAt}).
   */
  get rewindable(): boolean {
    return this.model.rewindable;
  }

  /** Whether a call may start at `pos` with the cache holding exactly the tokens fed before it. */
  canResumeAt(pos: number): boolean {
    return this.model.canResumeAt(pos);
  }

  /** KV memory in use against a full cache, and admissions per layer and head. */
  kvUsage(): KvUsage {
    return this.model.kvStats();
  }

  /** Memory summary. */
  describe(): string[] {
    return this.model.describe();
  }

  /** Frees the GPU buffers. */
  dispose(): void {
    this.model.destroy();
  }
}

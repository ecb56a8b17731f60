/**
 * The WebGPU backend: {@link GpuModel} behind the {@link ModelBackend} interface.
 *
 * @module
 */

import type { GGUFFile } from "../gguf/reader.ts";
import type { Gpu } from "../gpu/device.ts";
import type { GpuProfiler } from "../gpu/profiler.ts";
import type { LlamaHParams } from "../model/hparams.ts";
import { GpuModel } from "../model/gpu_model.ts";
import type { ModelBackend } from "./backend.ts";

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
    options: {
      contextLength: number;
      maxBatch?: number;
      onProgress?: (message: string) => void;
      profiler?: GpuProfiler;
    },
  ): Promise<GpuBackend> {
    return new GpuBackend(await GpuModel.load(gpu, file, hparams, options));
  }

  /** Runs the tokens; returns the last logits. */
  forward(tokens: number[], pos: number): Promise<Float32Array> {
    return this.model.forward(tokens, pos, "logits");
  }

  /** Runs the tokens; returns the argmax computed on the GPU. */
  forwardArgmax(tokens: number[], pos: number): Promise<number> {
    return this.model.forward(tokens, pos, "argmax");
  }

  /** Most greedy steps chained per readback. */
  get maxChain(): number {
    return this.model.maxChain;
  }

  /** Greedy steps chained on the GPU (one readback for all). */
  decodeGreedy(first: number, pos: number, count: number): Promise<number[]> {
    return this.model.decodeGreedy(first, pos, count);
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

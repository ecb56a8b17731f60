/**
 * The CPU backend: the plain f32 reference forward pass behind the {@link ModelBackend} interface.
 * Slow but dependable; used where no WebGPU adapter exists and as the oracle of the GPU path.
 *
 * @module
 */

import type { GGUFFile } from "../gguf/reader.ts";
import { ReferenceModel } from "../model/reference.ts";
import type { LlamaHParams } from "../model/hparams.ts";
import { argmax } from "./sampling.ts";
import type { ModelBackend, PrefillProgress } from "./backend.ts";
import { PrefillAbortedError } from "../errors.ts";

/** Tokens between two progress reports of the CPU backend. */
const CPU_PROGRESS_TOKENS = 64;

/** {@link ModelBackend} over {@link ReferenceModel}. */
export class CpuBackend implements ModelBackend {
  /** Always "cpu". */
  readonly kind = "cpu" as const;
  /** Shapes of the model. */
  readonly hparams: LlamaHParams;

  private constructor(private readonly model: ReferenceModel, readonly contextLength: number) {
    this.hparams = model.hparams;
  }

  /** Dequantises every weight of `file` to f32 and returns the backend. */
  static async load(file: GGUFFile, contextLength?: number): Promise<CpuBackend> {
    const model = await ReferenceModel.load(file);
    return new CpuBackend(
      model,
      Math.min(contextLength ?? model.hparams.contextLength, model.hparams.contextLength),
    );
  }

  /** See {@link ModelBackend.prefillProgress}: here after every {@link CPU_PROGRESS_TOKENS} tokens. */
  prefillProgress?: PrefillProgress;
  /**
   * See {@link ModelBackend.prefillSignal}: seen every {@link CPU_PROGRESS_TOKENS} tokens (where the
   * backend also lets other work, such as a Ctrl-C handler, run).
   */
  prefillSignal?: AbortSignal;

  /** Runs the tokens one by one; returns the last logits. */
  async forward(tokens: number[], pos: number): Promise<Float32Array> {
    let logits = new Float32Array(0);
    for (let i = 0; i < tokens.length; i++) {
      if (i > 0 && i % CPU_PROGRESS_TOKENS === 0 && this.prefillSignal) {
        await new Promise((resolve) => setTimeout(resolve, 0));
        if (this.prefillSignal.aborted) throw new PrefillAbortedError(i);
      }
      logits = this.model.forward(tokens[i], pos + i);
      if ((i + 1) % CPU_PROGRESS_TOKENS === 0 && i + 1 < tokens.length) {
        this.prefillProgress?.(i + 1, tokens.length);
      }
    }
    return logits;
  }

  /** Runs the tokens and returns the argmax of the last logits. */
  async forwardArgmax(tokens: number[], pos: number): Promise<number> {
    return argmax(await this.forward(tokens, pos));
  }

  /** Memory summary. */
  describe(): string[] {
    const h = this.hparams;
    const kvBytes = 2 * h.nLayer * h.nHeadKV * h.headDim * 4 * this.contextLength;
    return [`backend: cpu (f32 reference), KV cache up to ${(kvBytes / 2 ** 20).toFixed(1)} MiB`];
  }

  /** Nothing to release. */
  dispose(): void {}
}

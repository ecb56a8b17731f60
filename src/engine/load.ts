/**
 * Loading a model for generation: the GGUF file, its hyper-parameters, tokenizer and chat template, and a
 * backend (WebGPU when an adapter exists, otherwise the CPU reference).
 *
 * @module
 */

import { type GGUFFile, openGGUF } from "../gguf/reader.ts";
import { hparamsFromGGUF, type LlamaHParams } from "../model/hparams.ts";
import { type Tokenizer, tokenizerFromMetadata } from "../tokenizer/tokenizer.ts";
import { BadFlagError } from "../errors.ts";
import type { ModelBackend } from "./backend.ts";
import { CpuBackend } from "./cpu_backend.ts";
import { GpuBackend } from "./gpu_backend.ts";
import { getGpu } from "../gpu/device.ts";
import { DeviceError } from "../errors.ts";
import { GpuProfiler } from "../gpu/profiler.ts";
import { Session } from "./session.ts";

/** Which implementation runs the model. */
export type BackendChoice = "auto" | "cpu" | "webgpu";

/** Options of {@link loadModel}. */
export interface LoadOptions {
  /** Backend; "auto" picks WebGPU when an adapter exists. Default "auto". */
  backend?: BackendChoice;
  /** Context length to allocate for (default: the model's, capped by the backend). */
  contextLength?: number;
  /** Most prompt tokens per GPU prefill step (default 512). */
  maxBatch?: number;
  /** Progress messages (loading, uploading); the CLI prints them on stderr. */
  onProgress?: (message: string) => void;
  /** Time every GPU kernel (timestamp queries; one compute pass per op, so a little slower). */
  profile?: boolean;
}

/** A loaded model ready to generate. */
export interface Model {
  /** The GGUF file (kept open for lazy reads). */
  readonly file: GGUFFile;
  /** Shapes. */
  readonly hparams: LlamaHParams;
  /** The model's tokenizer. */
  readonly tokenizer: Tokenizer;
  /** The forward-pass implementation. */
  readonly backend: ModelBackend;
  /** Per-kernel GPU timings when loaded with `profile: true` on the WebGPU backend. */
  readonly profiler?: GpuProfiler;
  /** A new conversation on this model (sessions share the backend: use one at a time). */
  session(): Session;
  /** Releases the backend and closes the file. */
  close(): void;
}

/** Opens `path`, validates it as a Llama GGUF and prepares a backend. */
export async function loadModel(path: string, options: LoadOptions = {}): Promise<Model> {
  const progress = options.onProgress ?? (() => {});
  const file = await openGGUF(path);
  try {
    const hparams = hparamsFromGGUF(file);
    const tokenizer = tokenizerFromMetadata(file.metadata);
    if (options.contextLength !== undefined && options.contextLength > hparams.contextLength) {
      throw new BadFlagError(
        `--ctx ${options.contextLength} exceeds the model's trained context of ${hparams.contextLength}`,
      );
    }
    const choice = options.backend ?? "auto";
    let backend: ModelBackend | undefined;
    let profiler: GpuProfiler | undefined;
    if (choice !== "cpu") {
      try {
        const gpu = await getGpu({ profile: options.profile === true });
        if (options.profile) profiler = new GpuProfiler(gpu);
        progress(`loading ${path} on ${gpu.description}`);
        backend = await GpuBackend.load(gpu, file, hparams, {
          contextLength: options.contextLength ?? Math.min(hparams.contextLength, 4096),
          maxBatch: options.maxBatch,
          onProgress: progress,
          profiler,
        });
      } catch (e) {
        if (choice === "webgpu" || !(e instanceof DeviceError)) throw e;
        progress(`no usable WebGPU device (${e.message}); running on the CPU reference instead`);
      }
    }
    if (!backend) {
      progress(`loading ${path} on the CPU (f32 reference)`);
      backend = await CpuBackend.load(file, options.contextLength);
    }
    return {
      file,
      hparams,
      tokenizer,
      backend,
      profiler,
      session: () => new Session(backend, tokenizer),
      close() {
        backend.dispose();
        profiler?.destroy();
        file.close();
      },
    };
  } catch (e) {
    file.close();
    throw e;
  }
}

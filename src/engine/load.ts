/**
 * Loading a model for generation: the GGUF file, its hyper-parameters, tokenizer and chat template, and a
 * backend (WebGPU when an adapter exists, otherwise the CPU reference).
 *
 * @module
 */

import { type GGUFFile, openGGUF } from "../gguf/reader.ts";
import { hparamsFromGGUF, type LlamaHParams } from "../model/hparams.ts";
import { type Tokenizer, tokenizerFromMetadata } from "../tokenizer/tokenizer.ts";
import { BadFlagError, DeviceError, OutOfMemoryError, UnsupportedError } from "../errors.ts";
import type { ModelBackend } from "./backend.ts";
import { CpuBackend } from "./cpu_backend.ts";
import { GpuBackend } from "./gpu_backend.ts";
import { getGpu } from "../gpu/device.ts";
import { GpuProfiler } from "../gpu/profiler.ts";
import { Session } from "./session.ts";
import { type GateWeights, readGate } from "../gate/format.ts";
import type { KvPolicy } from "../kv/wgkv_policy.ts";

/** Which implementation runs the model. */
export type BackendChoice = "auto" | "cpu" | "webgpu";

/**
 * Which tokens the KV cache keeps. `full`: all. `wgkv`: the last `window` tokens plus older ones the write
 * gate (`gate`, a gate GGUF path or loaded weights) admitted. `window`: the last `window` only. `sink`: the
 * first `sinks` plus the last `window`. `random`: the last `window` plus a seeded random `rate` of older ones.
 * Windows default to the gate's (wgkv) or 256; the threshold to the gate's; `sinks` to 4, `rate` to 0.2 and
 * `seed` to 0.
 */
export type KvPolicySpec =
  | { kind: "full" }
  | { kind: "wgkv"; gate: string | GateWeights; window?: number; threshold?: number }
  | { kind: "window"; window?: number }
  | { kind: "sink"; window?: number; sinks?: number }
  | { kind: "random"; window?: number; rate?: number; seed?: number };

/** Options of {@link loadModel}. */
export interface LoadOptions {
  /** Backend; "auto" picks WebGPU when an adapter exists. Default "auto". */
  backend?: BackendChoice;
  /**
   * Context length to allocate for (default: the model's, at most 4096 tokens on the WebGPU backend). More
   * than the model's trained context is a {@link BadFlagError}.
   */
  contextLength?: number;
  /**
   * Most prompt tokens per GPU prefill step (default 2048 with the full cache on a hardware GPU, 512 under
   * the other policies or on a software adapter).
   */
  maxBatch?: number;
  /** Progress messages (loading, uploading); the CLI prints them on stderr. */
  onProgress?: (message: string) => void;
  /** Time every GPU kernel (timestamp queries; one compute pass per op, so a little slower). */
  profile?: boolean;
  /** KV cache policy (default full). Policies other than full need the WebGPU backend. */
  kv?: KvPolicySpec;
  /** Share of a full cache reserved for admitted tokens (non-full policies; see `GpuModelOptions`). */
  kvGlobalFraction?: number;
  /**
   * Prefill products of quantised weights through 8-bit integer dot products, the activations rounded
   * per 32 values (as llama.cpp does); false keeps them in f32. Default: true on a GPU, false on a
   * software adapter (see `GpuModelOptions.int8Prefill`).
   */
  int8Prefill?: boolean;
  /**
   * Decode products of quantised weights through 8-bit integer dot products, the activations rounded per 16
   * values (as llama.cpp's quantised matrix-vector products do); false keeps them in f32. Default: true on
   * a GPU, false on a software adapter (see `GpuModelOptions.int8Decode`).
   */
  int8Decode?: boolean;
  /**
   * Prefill products of F16 weights with f16 arithmetic, each 16–32 columns summed in f16 (llama.cpp's
   * Vulkan backend sums whole rows so), where the GPU has `shader-f16`. Default false: slower than f32 on an
   * H100 (see `GpuModelOptions.halfPrefill`).
   */
  halfPrefill?: boolean;
  /**
   * Prefill products on the GPU's matrix units (cooperative matrices), where the device has working ones:
   * weights of any type and the activations rounded to f16, sums in f32. `true` on a GPU without them is
   * a one-line error. Default false (see `GpuModelOptions.coopPrefill`).
   */
  coopPrefill?: boolean;
}

/** Resolves a policy spec (reading and checking the gate file against the model). */
export async function resolvePolicy(spec: KvPolicySpec, file: GGUFFile): Promise<KvPolicy<GateWeights>> {
  switch (spec.kind) {
    case "full":
      return spec;
    case "wgkv": {
      const gate = typeof spec.gate === "string" ? await readGate(spec.gate, file) : spec.gate;
      return {
        kind: "wgkv",
        gate,
        window: spec.window ?? gate.window,
        threshold: spec.threshold ?? gate.threshold,
      };
    }
    case "window":
      return { kind: "window", window: spec.window ?? 256 };
    case "sink":
      return { kind: "sink", window: spec.window ?? 256, sinks: spec.sinks ?? 4 };
    case "random":
      return { kind: "random", window: spec.window ?? 256, rate: spec.rate ?? 0.2, seed: spec.seed ?? 0 };
  }
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

/** Context the WebGPU backend allocates when none is asked for: the model's, at most this many tokens. */
export const DEFAULT_GPU_CONTEXT = 4096;

/**
 * The context to allocate for a prompt of `promptTokens` followed by at most `maxTokens` generated ones
 * (`Infinity`: no limit): `asked` when given, else {@link DEFAULT_GPU_CONTEXT} grown to hold the prompt and
 * the generated tokens, within the model's `trained` context. A prompt longer than that context is an
 * {@link OutOfMemoryError} with the numbers, so a caller can refuse it before loading any weights.
 */
export function contextForPrompt(
  trained: number,
  promptTokens: number,
  maxTokens: number,
  asked?: number,
): number {
  const limit = asked ?? trained;
  if (promptTokens > limit) {
    throw new OutOfMemoryError(
      `context overflow: the prompt's ${promptTokens} tokens exceed ${
        asked === undefined ? `the model's trained context of ${trained}` : `--ctx ${asked}`
      }`,
    );
  }
  if (asked !== undefined) return asked;
  const wanted = Number.isFinite(maxTokens) ? promptTokens + maxTokens : promptTokens + 1;
  return Math.min(trained, Math.max(DEFAULT_GPU_CONTEXT, wanted));
}

/** A model file opened and validated, its weights not yet read: what a caller needs before loading. */
export interface ModelHeader {
  /** The open GGUF file. */
  file: GGUFFile;
  /** Shapes of the model. */
  hparams: LlamaHParams;
  /** Tokenizer from the file's metadata. */
  tokenizer: Tokenizer;
}

/**
 * Opens `path` and validates it as a Llama GGUF, reading its header (metadata, tensor table) but no
 * weight: e.g. to tokenize a prompt and size the context before {@link loadModel}, which takes the header
 * over (so the file, whose vocabulary can take a second to parse, is read once).
 */
export async function readModelHeader(path: string): Promise<ModelHeader> {
  const file = await openGGUF(path);
  try {
    return {
      file,
      hparams: hparamsFromGGUF(file),
      tokenizer: tokenizerFromMetadata(file.metadata, file.path),
    };
  } catch (e) {
    file.close();
    throw e;
  }
}

/**
 * Opens `source` (a path, or a header from {@link readModelHeader}, which the model then owns), validates
 * it as a Llama GGUF and prepares a backend.
 */
export async function loadModel(source: string | ModelHeader, options: LoadOptions = {}): Promise<Model> {
  const progress = options.onProgress ?? (() => {});
  const { file, hparams, tokenizer } = typeof source === "string" ? await readModelHeader(source) : source;
  const path = file.path;
  try {
    if (options.contextLength !== undefined && options.contextLength > hparams.contextLength) {
      throw new BadFlagError(
        `--ctx ${options.contextLength} exceeds the model's trained context of ${hparams.contextLength}`,
      );
    }
    const policy = await resolvePolicy(options.kv ?? { kind: "full" }, file);
    const choice = options.backend ?? "auto";
    if (policy.kind !== "full" && choice === "cpu") {
      throw new BadFlagError(
        `--kv ${policy.kind} needs the WebGPU backend (the CPU reference keeps a full cache)`,
      );
    }
    let backend: ModelBackend | undefined;
    let profiler: GpuProfiler | undefined;
    if (choice !== "cpu") {
      try {
        const gpu = await getGpu({
          profile: options.profile === true,
          coopMatrix: options.coopPrefill === true,
        });
        if (options.profile) profiler = new GpuProfiler(gpu);
        progress(`loading ${path} on ${gpu.description}`);
        backend = await GpuBackend.load(gpu, file, hparams, {
          contextLength: options.contextLength ?? Math.min(hparams.contextLength, DEFAULT_GPU_CONTEXT),
          maxBatch: options.maxBatch,
          onProgress: progress,
          profiler,
          policy,
          globalFraction: options.kvGlobalFraction,
          int8Prefill: options.int8Prefill,
          int8Decode: options.int8Decode,
          halfPrefill: options.halfPrefill,
          coopPrefill: options.coopPrefill,
        });
      } catch (e) {
        const fallback = e instanceof DeviceError || e instanceof UnsupportedError;
        if (choice === "webgpu" || policy.kind !== "full" || !fallback) throw e;
        progress(
          e instanceof DeviceError
            ? `no usable WebGPU device (${e.message}); running on the CPU reference instead`
            : `the WebGPU kernels do not support this model (${e.message}); running on the CPU reference instead`,
        );
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

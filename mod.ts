/**
 * wgkv: run GGUF Llama models on WebGPU (or the CPU reference) from Deno, with Write-Gated KV (a learned
 * gate per layer and KV head that decides which tokens stay in the KV cache once they leave a local window).
 *
 * ```ts
 * import { loadModel } from "jsr:@wgkv/wgkv";
 *
 * const model = await loadModel("model.gguf"); // or { kv: { kind: "wgkv", gate: "gate.gguf" } }
 * const session = model.session();
 * const prompt = model.tokenizer.encode("Once upon a time", { addBos: true });
 * const out = new TextEncoder();
 * for await (const piece of session.generate(prompt, { maxTokens: 64, temperature: 0 })) {
 *   await Deno.stdout.write(out.encode(piece.text));
 * }
 * console.log(session.lastStats); // prompt and generated tokens, prefill and decode times, stop reason
 * console.log(model.backend.kvUsage?.()); // KV memory in use against a full cache (WebGPU backend)
 * model.close();
 * ```
 *
 * {@link loadModel} takes a {@link KvPolicySpec} as `kv` (`full`, `wgkv`, `window`, `sink`, `random`;
 * every policy but `full` needs the WebGPU backend). A {@link Session} keeps its KV cache between
 * {@link Session.generate} calls, so a second call prefills only its new tokens. Also exported: the GGUF
 * reader ({@link openGGUF}) and writer ({@link writeGGUF}), tokenizers, chat templates ({@link renderChat}),
 * the CPU reference model ({@link ReferenceModel}), synthetic models ({@link writeSyntheticModel}), write
 * gates ({@link importGate}, {@link initGate}, {@link readGate}, {@link writeGate}, {@link gateScores}),
 * sampling processors and the error classes ({@link WgkvError} and its subclasses).
 *
 * @module
 */

export {
  type BackendChoice,
  type KvPolicySpec,
  loadModel,
  type LoadOptions,
  type Model,
  type ModelHeader,
  readModelHeader,
} from "./src/engine/load.ts";
export {
  type GeneratedPiece,
  type GenerateOptions,
  type GenerationStats,
  Session,
} from "./src/engine/session.ts";
export type { ModelBackend, PrefillProgress } from "./src/engine/backend.ts";
export type { KvUsage } from "./src/model/gpu_model.ts";
export type { SampleStart } from "./src/model/gpu_model_options.ts";
export type { SampleSettings } from "./src/gpu/ops/sample.ts";
export type { DualCacheStats } from "./src/kv/dual_cache.ts";
export { GpuProfiler, type ProfileRow } from "./src/gpu/profiler.ts";
export {
  argmax,
  type Candidates,
  type LogitsProcessor,
  minP,
  repetitionPenalty,
  Sampler,
  type SamplingOptions,
  temperature,
  topK,
  topP,
} from "./src/engine/sampling.ts";
export {
  type ChatMessage,
  type ChatOptions,
  type ChatRole,
  renderChat,
  type RenderedChat,
} from "./src/chat/template.ts";
export {
  type DecodeOptions,
  type EncodeOptions,
  type StreamDecoder,
  type StreamDecoderOptions,
  type Tokenizer,
  tokenizerFromMetadata,
} from "./src/tokenizer/tokenizer.ts";
export type { TokenizerMetadata, Vocab } from "./src/tokenizer/vocab.ts";
export {
  GGUFFile,
  GGUFValueType,
  type MetadataType,
  type MetadataValue,
  openGGUF,
  type TensorInfo,
} from "./src/gguf/reader.ts";
export {
  type ArrayEntry,
  type MetadataEntry,
  metadataOf,
  type ScalarEntry,
  type TensorData,
  type TensorEntry,
  writeGGUF,
  type WriteOptions,
} from "./src/gguf/writer.ts";
export { GGMLType, type GGMLTypeInfo, typeInfo } from "./src/gguf/types.ts";
export { hparamsFromGGUF, type LlamaHParams } from "./src/model/hparams.ts";
export type { Llama3RopeScaling } from "./src/model/ops.ts";
export { ReferenceModel } from "./src/model/reference.ts";
export {
  SYNTH_SHAPES,
  SYNTH_TYPES,
  type SynthOptions,
  type SynthShape,
  type SynthType,
  writeSyntheticModel,
} from "./src/model/synth.ts";
export {
  type AdapterSource,
  getGpu,
  Gpu,
  type GpuOptions,
  type Kernel,
  noAdapterError,
} from "./src/gpu/device.ts";
export { BufferPool, type BufferPoolStats } from "./src/gpu/buffer_pool.ts";
export type { CoopMatrixSupport } from "./src/gpu/coop_probe.ts";
export {
  type GateActivation,
  type GateLayer,
  type GateWeights,
  readGate,
  type ReadGateOptions,
  writeGate,
} from "./src/gate/format.ts";
export type { KeyOrder } from "./src/gate/key_order.ts";
export { importGate, type ImportGateOptions } from "./src/gate/import.ts";
export { initGate, type InitGateOptions } from "./src/gate/init.ts";
export { gateScores } from "./src/gate/reference.ts";
export {
  BadFileError,
  BadFlagError,
  DeviceError,
  OutOfMemoryError,
  PrefillAbortedError,
  UnsupportedError,
  WgkvError,
} from "./src/errors.ts";
export { VERSION } from "./src/version.ts";

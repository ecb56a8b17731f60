/**
 * wgkv: run GGUF Llama models on WebGPU (or the CPU reference) from Deno.
 *
 * ```ts
 * import { loadModel } from "jsr:@wgkv/wgkv";
 * const model = await loadModel("model.gguf");
 * const session = model.session();
 * const prompt = model.tokenizer.encode("Once upon a time", { addBos: true });
 * for await (const piece of session.generate(prompt, { maxTokens: 64, temperature: 0 })) {
 *   console.log(piece.text);
 * }
 * model.close();
 * ```
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
export type { KvUsage, SampleStart } from "./src/model/gpu_model.ts";
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
export * from "./src/errors.ts";
export { VERSION } from "./src/version.ts";

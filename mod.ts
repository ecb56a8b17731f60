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

export { type BackendChoice, loadModel, type LoadOptions, type Model } from "./src/engine/load.ts";
export {
  type GeneratedPiece,
  type GenerateOptions,
  type GenerationStats,
  Session,
} from "./src/engine/session.ts";
export type { ModelBackend } from "./src/engine/backend.ts";
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
export * from "./src/errors.ts";
export { VERSION } from "./src/version.ts";

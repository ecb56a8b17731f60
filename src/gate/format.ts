/**
 * The WG-KV gate file: a GGUF v3 file with `general.architecture = "wgkv-gate"` that holds the write-gate
 * predictor of every layer of one base model, all tensors F32.
 *
 * Metadata (prefix `wgkv-gate.`):
 * - `base.architecture` (string, e.g. "llama"), `block_count`, `head_count_kv`, `key_length` (head dim D):
 *   the base model's shape;
 * - `base.k_hash` (string, hex) and `base.k_hash_scheme` (string): fingerprint of the base model's K
 *   projections, see {@link kProjectionHash};
 * - `inputs` (string array, `["pre_k", "post_k"]`), `expand` (f32), `inner_size` (u32, hidden units per KV
 *   head), `activation` ("gelu" exact erf, or "silu"), `norm_epsilon` (f32, 1e-6), `score_floor` (f32, the
 *   lower clamp of g, 1e-3);
 * - `window` (u32, W), `threshold` (f32, τ in [0, 1], admitted iff g > τ: since g ≤ 1, τ = 1 admits
 *   nothing, while τ = 0.999999 still admits a saturated score of exactly 1.0), optional `lambda` (f32,
 *   the sparsity weight it was trained with);
 * - `key_order` ("gguf" or "hf", see {@link ./key_order.ts}): the order of the D values of each key that
 *   the norm weights and the W1 input columns expect.
 *
 * Tensors of layer i (ggml shapes: innermost first; `Hkv` KV heads, `inner` hidden units):
 * - `blk.{i}.gate.pre_norm` [D], `blk.{i}.gate.post_norm` [D]: RMSNorm weights, shared by the KV heads;
 * - `blk.{i}.gate.w1` [2D, inner, Hkv]: row `h·inner + r` is hidden unit r of head h, its columns are the
 *   normalised pre-RoPE key (0..D−1) then the normalised post-RoPE key (D..2D−1) (= the reference's
 *   `conv1.weight[:, :, 0]`);
 * - `blk.{i}.gate.b1` [inner, Hkv]; `blk.{i}.gate.w2` [inner, Hkv]; `blk.{i}.gate.b2` [Hkv].
 *
 * @module
 */

import { BadFileError, UnsupportedError } from "../errors.ts";
import { type GGUFFile, openGGUF, type TensorInfo } from "../gguf/reader.ts";
import { GGMLType } from "../gguf/types.ts";
import { f32, str, strings, type TensorEntry, u32, writeGGUF } from "../gguf/writer.ts";
import type { MetadataEntry } from "../gguf/writer.ts";
import { hparamsFromGGUF } from "../model/hparams.ts";
import { blockTensorName } from "../model/tensor_names.ts";
import { KEY_ORDERS, type KeyOrder } from "./key_order.ts";

/** `general.architecture` of a gate file. */
export const GATE_ARCHITECTURE = "wgkv-gate";

/** Inputs of the predictor; the only combination supported. */
export const GATE_INPUTS: readonly string[] = ["pre_k", "post_k"];

/** Hidden-layer activations: exact (erf) GELU or SiLU. */
export type GateActivation = "gelu" | "silu";

/** Name of the K-projection fingerprint scheme written by {@link kProjectionHash}. */
export const K_HASH_SCHEME = "sha256-attn_k-sample-v1";

/** Defaults of the reference implementation. */
export const GATE_DEFAULTS = {
  expand: 4.0,
  activation: "gelu" as GateActivation,
  window: 256,
  threshold: 0.1,
  normEpsilon: 1e-6,
  scoreFloor: 1e-3,
} as const;

/** One layer's gate weights, F32, layouts as in the module comment (ggml shapes read innermost first). */
export interface GateLayer {
  /** RMSNorm weight of the pre-RoPE key, [D]. */
  readonly preNorm: Float32Array;
  /** RMSNorm weight of the post-RoPE key, [D]. */
  readonly postNorm: Float32Array;
  /** First layer, [Hkv][inner][2D]. */
  readonly w1: Float32Array;
  /** First bias, [Hkv][inner]. */
  readonly b1: Float32Array;
  /** Second layer, [Hkv][inner]. */
  readonly w2: Float32Array;
  /** Second bias, [Hkv]. */
  readonly b2: Float32Array;
}

/** A whole gate: its shape, settings, binding to a base model and per-layer weights. */
export interface GateWeights {
  /** `general.architecture` of the base model. */
  baseArchitecture: string;
  /** KV heads per layer. */
  kvHeads: number;
  /** Values per head (D). */
  headDim: number;
  /** Hidden units per KV head (`headDim · expand`). */
  inner: number;
  /** Hidden width factor the gate was built with. */
  expand: number;
  /** Predictor inputs, always `["pre_k", "post_k"]` (the key before and after RoPE). */
  inputs: readonly string[];
  /** Hidden activation. */
  activation: GateActivation;
  /** Local window W (tokens always attended, including the current one). */
  window: number;
  /** Admission threshold τ in [0, 1] (admitted iff g > τ; 1 admits nothing). */
  threshold: number;
  /** Sparsity weight λ of training, when known. */
  lambda?: number;
  /** Order of the values in each key that the weights expect. */
  keyOrder: KeyOrder;
  /** RMSNorm epsilon (1e-6). */
  normEpsilon: number;
  /** Lower clamp of the score (1e-3). */
  scoreFloor: number;
  /**
   * Hex SHA-256 fingerprint of the base model's K projections (`blk.*.attn_k.weight`: names, types, shapes
   * and bytes, sampled in large tensors), which binds the gate to that exact model file.
   */
  baseKHash: string;
  /** Per-layer weights; the length is the base model's layer count. */
  layers: GateLayer[];
}

/** Number of f32 parameters of one layer. */
export function gateLayerParameters(gate: Pick<GateWeights, "kvHeads" | "headDim" | "inner">): number {
  const { kvHeads: H, headDim: D, inner } = gate;
  return 2 * D + H * inner * 2 * D + 2 * H * inner + H;
}

/** The expected length of each tensor of a layer. */
function layerLengths(
  gate: Pick<GateWeights, "kvHeads" | "headDim" | "inner">,
): Record<keyof GateLayer, number> {
  const { kvHeads: H, headDim: D, inner } = gate;
  return { preNorm: D, postNorm: D, w1: H * inner * 2 * D, b1: H * inner, w2: H * inner, b2: H };
}

/** The ggml shape of each tensor of a layer. */
function layerShapes(
  gate: Pick<GateWeights, "kvHeads" | "headDim" | "inner">,
): Record<keyof GateLayer, number[]> {
  const { kvHeads: H, headDim: D, inner } = gate;
  return { preNorm: [D], postNorm: [D], w1: [2 * D, inner, H], b1: [inner, H], w2: [inner, H], b2: [H] };
}

const TENSOR_SUFFIX: Record<keyof GateLayer, string> = {
  preNorm: "pre_norm",
  postNorm: "post_norm",
  w1: "w1",
  b1: "b1",
  w2: "w2",
  b2: "b2",
};

/** Name of the gate tensor `part` of layer `layer`, e.g. `blk.3.gate.w1`. */
export function gateTensorName(layer: number, part: keyof GateLayer): string {
  return `blk.${layer}.gate.${TENSOR_SUFFIX[part]}`;
}

/** Bytes of each K-projection tensor that {@link kProjectionHash} reads in full; larger ones are sampled. */
const HASH_FULL_BYTES = 256 * 1024;
/** Samples taken from a larger tensor, evenly spaced from its first to its last byte. */
const HASH_SAMPLES = 16;
/** Bytes per sample. */
const HASH_SAMPLE_BYTES = 16 * 1024;

/**
 * Fingerprint of a model's K projections: SHA-256 over, for every layer in order, the tensor name of
 * `blk.{i}.attn_k.weight`, its ggml type, dimensions and byte length, then its bytes: all of them when
 * the tensor has at most 256 KiB, else 16 samples of 16 KiB at evenly spaced offsets (the first at byte 0,
 * the last ending at the last byte). At most 256 KiB per layer is read, so this takes milliseconds even
 * for multi-GB models. It identifies the exact file contents of those tensors: a re-quantised copy of the
 * same model has a different fingerprint.
 */
export async function kProjectionHash(model: GGUFFile): Promise<string> {
  const hp = hparamsFromGGUF(model);
  const parts: Uint8Array[] = [];
  const encoder = new TextEncoder();
  for (let i = 0; i < hp.nLayer; i++) {
    const info = model.tensor(blockTensorName(i, "attn_k"));
    parts.push(encoder.encode(`${info.name}|${info.type}|${info.shape.join("x")}|${info.byteLength}\n`));
    for (const [start, length] of sampleRanges(info)) parts.push(await model.readBytes(info, start, length));
  }
  const total = parts.reduce((n, p) => n + p.length, 0);
  const all = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    all.set(p, o);
    o += p.length;
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

function sampleRanges(info: TensorInfo): [number, number][] {
  const n = info.byteLength;
  if (n <= HASH_FULL_BYTES) return [[0, n]];
  const ranges: [number, number][] = [];
  const span = n - HASH_SAMPLE_BYTES;
  for (let s = 0; s < HASH_SAMPLES; s++) {
    ranges.push([Math.floor((span * s) / (HASH_SAMPLES - 1)), HASH_SAMPLE_BYTES]);
  }
  return ranges;
}

/** Options of {@link readGate}. */
export interface ReadGateOptions {
  /** Skip the K-projection fingerprint check against the model (shapes are still checked). */
  skipHashCheck?: boolean;
}

/**
 * Checks that `gate` fits `model`: architecture, layer count, KV heads and head dim, and (unless
 * `skipHashCheck`) the K-projection fingerprint. `gatePath` names the gate in errors.
 */
export async function checkGateMatchesModel(
  gate: GateWeights,
  gatePath: string,
  model: GGUFFile,
  options: ReadGateOptions = {},
): Promise<void> {
  const hp = hparamsFromGGUF(model);
  const mismatch = (what: string, g: unknown, m: unknown) =>
    new BadFileError(
      `gate ${gatePath} does not fit model ${model.path}: ${what} ${g} in the gate, ${m} in the model`,
    );
  if (gate.baseArchitecture !== model.architecture) {
    throw mismatch("architecture", gate.baseArchitecture, model.architecture);
  }
  if (gate.layers.length !== hp.nLayer) throw mismatch("layer count", gate.layers.length, hp.nLayer);
  if (gate.kvHeads !== hp.nHeadKV) throw mismatch("KV heads", gate.kvHeads, hp.nHeadKV);
  if (gate.headDim !== hp.headDim) throw mismatch("head dim", gate.headDim, hp.headDim);
  if (options.skipHashCheck) return;
  const hash = await kProjectionHash(model);
  if (hash !== gate.baseKHash) {
    throw new BadFileError(
      `gate ${gatePath} was made for a different model than ${model.path}: K-projection hash ` +
        `${gate.baseKHash.slice(0, 16)}… in the gate, ${hash.slice(0, 16)}… in the model`,
    );
  }
}

/**
 * Reads and validates the gate file at `path`: architecture, every metadata field (types and ranges),
 * every tensor (present, F32, shape from the metadata, no extra tensors); with `model`, also the fit to
 * that model (architecture, layer count, KV heads, head dim and, unless `options.skipHashCheck`, the
 * fingerprint of its K projections). Errors are one-line {@link BadFileError}s naming the file and
 * the field or tensor ({@link UnsupportedError} for valid settings this version cannot run).
 */
export async function readGate(
  path: string,
  model?: GGUFFile,
  options: ReadGateOptions = {},
): Promise<GateWeights> {
  const file = await openGGUF(path);
  try {
    const gate = await readGateFrom(file);
    if (model) await checkGateMatchesModel(gate, path, model, options);
    return gate;
  } finally {
    file.close();
  }
}

const KEY = (name: string) => `${GATE_ARCHITECTURE}.${name}`;

async function readGateFrom(file: GGUFFile): Promise<GateWeights> {
  const path = file.path;
  const arch = file.architecture;
  if (arch !== GATE_ARCHITECTURE) {
    throw new BadFileError(
      `${path}: general.architecture is "${arch}", expected "${GATE_ARCHITECTURE}" (a gate file)`,
    );
  }
  const count = (name: string, max = 2 ** 20) => {
    const v = file.getNumber(KEY(name));
    if (!Number.isSafeInteger(v) || v < 1 || v > max) {
      throw new BadFileError(`${path}: metadata ${KEY(name)} = ${v} is not an integer in [1, ${max}]`);
    }
    return v;
  };
  const real = (name: string, lo: number, hi: number, fallback?: number) => {
    const v = file.getNumber(KEY(name), fallback);
    if (!(v >= lo && v <= hi)) {
      throw new BadFileError(`${path}: metadata ${KEY(name)} = ${v} is outside [${lo}, ${hi}]`);
    }
    return v;
  };
  const nLayer = count("block_count", 4096);
  const kvHeads = count("head_count_kv", 4096);
  const headDim = count("key_length", 4096);
  const inner = count("inner_size", 1 << 16);
  if (headDim % 2 !== 0) throw new BadFileError(`${path}: metadata ${KEY("key_length")} = ${headDim} is odd`);
  const inputs = file.getArray(KEY("inputs"));
  if (inputs.length !== GATE_INPUTS.length || inputs.some((v, i) => v !== GATE_INPUTS[i])) {
    throw new UnsupportedError(
      `${path}: gate inputs ${JSON.stringify(inputs)} are not supported (only ${
        JSON.stringify(GATE_INPUTS)
      })`,
    );
  }
  const activation = file.getString(KEY("activation"));
  if (activation !== "gelu" && activation !== "silu") {
    throw new UnsupportedError(`${path}: gate activation "${activation}" is not supported (gelu, silu)`);
  }
  const keyOrder = file.getString(KEY("key_order"));
  if (!KEY_ORDERS.includes(keyOrder as KeyOrder)) {
    throw new BadFileError(
      `${path}: metadata ${KEY("key_order")} = "${keyOrder}", expected one of ${KEY_ORDERS}`,
    );
  }
  const scheme = file.getString(KEY("base.k_hash_scheme"));
  if (scheme !== K_HASH_SCHEME) {
    throw new UnsupportedError(
      `${path}: K-projection hash scheme "${scheme}" is not supported (${K_HASH_SCHEME})`,
    );
  }
  const baseKHash = file.getString(KEY("base.k_hash"));
  if (!/^[0-9a-f]{64}$/.test(baseKHash)) {
    throw new BadFileError(`${path}: metadata ${KEY("base.k_hash")} is not a SHA-256`);
  }
  const gate: GateWeights = {
    baseArchitecture: file.getString(KEY("base.architecture")),
    kvHeads,
    headDim,
    inner,
    expand: real("expand", 1e-3, 1e3),
    inputs: [...GATE_INPUTS],
    activation,
    window: count("window", 1 << 24),
    threshold: real("threshold", 0, 1),
    keyOrder: keyOrder as KeyOrder,
    normEpsilon: real("norm_epsilon", 0, 1),
    scoreFloor: real("score_floor", 0, 1),
    baseKHash,
    layers: [],
  };
  if (file.hasMeta(KEY("lambda"))) gate.lambda = real("lambda", 0, 1e6);

  const lengths = layerLengths(gate);
  const shapes = layerShapes(gate);
  const expected = new Set<string>();
  for (let i = 0; i < nLayer; i++) {
    const layer: Partial<Record<keyof GateLayer, Float32Array>> = {};
    for (const part of Object.keys(TENSOR_SUFFIX) as (keyof GateLayer)[]) {
      const name = gateTensorName(i, part);
      expected.add(name);
      const info = file.tensor(name);
      if (info.type !== GGMLType.F32) throw new BadFileError(`${path}: tensor ${name} is not F32`);
      const shape = shapes[part];
      if (info.shape.length !== shape.length || info.shape.some((d, k) => d !== shape[k])) {
        throw new BadFileError(`${path}: tensor ${name} has shape [${info.shape}], expected [${shape}]`);
      }
      const data = await file.readF32(info);
      if (data.length !== lengths[part]) {
        throw new BadFileError(`${path}: tensor ${name} has the wrong length`);
      }
      for (let k = 0; k < data.length; k++) {
        if (!Number.isFinite(data[k])) {
          throw new BadFileError(`${path}: tensor ${name} holds ${data[k]} at ${k}`);
        }
      }
      layer[part] = data;
    }
    gate.layers.push(layer as GateLayer);
  }
  const extra = file.tensors.find((t) => !expected.has(t.name));
  if (extra) throw new BadFileError(`${path}: unexpected tensor ${extra.name} in a ${nLayer}-layer gate`);
  return gate;
}

/**
 * Checks a gate in memory (lengths of every tensor, finite settings); throws a {@link BadFileError}
 * naming `what` and the first problem.
 */
export function checkGate(gate: GateWeights, what: string): void {
  const lengths = layerLengths(gate);
  if (gate.layers.length < 1) throw new BadFileError(`${what}: gate has no layers`);
  if (gate.headDim % 2 !== 0) throw new BadFileError(`${what}: head dim ${gate.headDim} is odd`);
  if (!Number.isInteger(gate.window) || gate.window < 1) {
    throw new BadFileError(`${what}: window ${gate.window} is not a whole number of tokens ≥ 1`);
  }
  if (!(gate.threshold >= 0 && gate.threshold <= 1)) {
    throw new BadFileError(`${what}: threshold ${gate.threshold} is outside [0, 1]`);
  }
  gate.layers.forEach((layer, i) => {
    for (const part of Object.keys(TENSOR_SUFFIX) as (keyof GateLayer)[]) {
      if (layer[part].length !== lengths[part]) {
        throw new BadFileError(
          `${what}: ${gateTensorName(i, part)} has ${layer[part].length} values, expected ${lengths[part]}`,
        );
      }
    }
  });
}

/** Writes `gate` to `path` in the gate format (see the module comment); the file appears atomically. */
export async function writeGate(path: string, gate: GateWeights): Promise<void> {
  checkGate(gate, path);
  const metadata: Record<string, MetadataEntry> = {
    "general.architecture": str(GATE_ARCHITECTURE),
    "general.name": str(`WG-KV write gate (${gate.baseArchitecture}, ${gate.layers.length} layers)`),
    [KEY("base.architecture")]: str(gate.baseArchitecture),
    [KEY("base.k_hash_scheme")]: str(K_HASH_SCHEME),
    [KEY("base.k_hash")]: str(gate.baseKHash),
    [KEY("block_count")]: u32(gate.layers.length),
    [KEY("head_count_kv")]: u32(gate.kvHeads),
    [KEY("key_length")]: u32(gate.headDim),
    [KEY("inputs")]: strings([...gate.inputs]),
    [KEY("expand")]: f32(gate.expand),
    [KEY("inner_size")]: u32(gate.inner),
    [KEY("activation")]: str(gate.activation),
    [KEY("norm_epsilon")]: f32(gate.normEpsilon),
    [KEY("score_floor")]: f32(gate.scoreFloor),
    [KEY("window")]: u32(gate.window),
    [KEY("threshold")]: f32(gate.threshold),
    [KEY("key_order")]: str(gate.keyOrder),
  };
  if (gate.lambda !== undefined) metadata[KEY("lambda")] = f32(gate.lambda);
  const shapes = layerShapes(gate);
  const tensors: TensorEntry[] = [];
  gate.layers.forEach((layer, i) => {
    for (const part of Object.keys(TENSOR_SUFFIX) as (keyof GateLayer)[]) {
      const values = layer[part];
      tensors.push({
        name: gateTensorName(i, part),
        type: GGMLType.F32,
        shape: shapes[part],
        data: new Uint8Array(values.buffer, values.byteOffset, values.byteLength),
      });
    }
  });
  await writeGGUF(path, { metadata, tensors });
}

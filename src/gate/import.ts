/**
 * Converts a write-gate checkpoint of the reference implementation (a `torch.save` state dict with keys
 * `model.layers.{i}.self_attn.g_predictors.{pre_key_norm.weight, post_key_norm.weight, conv1.weight,
 * conv1.bias, conv2.weight, conv2.bias}`) into a {@link GateWeights} bound to a GGUF model.
 *
 * The checkpoint was trained on Hugging Face keys, whose head values are in HF order; by default the norm
 * weights and the W1 input columns of both key blocks are permuted to GGUF order so the gate can read the
 * keys our engine computes from the GGUF model directly ({@link ./key_order.ts}).
 *
 * @module
 */

import { BadFileError } from "../errors.ts";
import { type GGUFFile, openGGUF } from "../gguf/reader.ts";
import { hparamsFromGGUF } from "../model/hparams.ts";
import {
  checkGate,
  GATE_DEFAULTS,
  GATE_INPUTS,
  type GateLayer,
  type GateWeights,
  kProjectionHash,
} from "./format.ts";
import { hfToGguf, type KeyOrder } from "./key_order.ts";
import { readTorchCheckpoint, type TorchTensor } from "./torch.ts";

/** Options of {@link importGate}. */
export interface ImportGateOptions {
  /** Order to store the weights in: `gguf` (default, for GGUF models) or `hf` (as in the checkpoint). */
  keyOrder?: KeyOrder;
  /** Hidden width factor the checkpoint was trained with (default 4.0, the Llama default). */
  expand?: number;
  /** Local window W (default 256). */
  window?: number;
  /** Admission threshold τ (default 0.1). */
  threshold?: number;
  /** Sparsity weight λ; by default taken from a file name ending in `-<number>.pt`, else not recorded. */
  lambda?: number;
  /** The model, already open (it is then not reopened from `modelPath`, nor closed). */
  model?: GGUFFile;
}

const PREFIX = (i: number) => `model.layers.${i}.self_attn.g_predictors.`;
const PARTS = [
  "pre_key_norm.weight",
  "post_key_norm.weight",
  "conv1.weight",
  "conv1.bias",
  "conv2.weight",
  "conv2.bias",
] as const;

/** λ from a released checkpoint's file name (`llama-3.1-8b-instruct-0.16.pt` → 0.16), if it has one. */
export function lambdaFromFileName(path: string): number | undefined {
  const match = /-(\d*\.\d+)\.pt$/.exec(path.split("/").pop() ?? "");
  return match ? Number(match[1]) : undefined;
}

/**
 * Reads the checkpoint at `checkpointPath`, validates it against the GGUF model at `modelPath` (every key
 * present and no other, layer count, KV heads, head dim, inner = head dim · expand) and returns the gate,
 * in GGUF key order unless `options.keyOrder` is `hf`. One-line {@link BadFileError}s name the checkpoint
 * and the key at fault.
 */
export async function importGate(
  checkpointPath: string,
  modelPath: string,
  options: ImportGateOptions = {},
): Promise<GateWeights> {
  const tensors = await readTorchCheckpoint(checkpointPath);
  const model = options.model ?? await openGGUF(modelPath);
  try {
    return await gateFromStateDict(tensors, checkpointPath, model, options);
  } finally {
    if (!options.model) model.close();
  }
}

/** The conversion of {@link importGate} on a state dict already read (`where` names it in errors). */
export async function gateFromStateDict(
  tensors: Map<string, TorchTensor>,
  where: string,
  model: GGUFFile,
  options: ImportGateOptions = {},
): Promise<GateWeights> {
  const hp = hparamsFromGGUF(model);
  const { nLayer: L, nHeadKV: H, headDim: D } = hp;
  const expand = options.expand ?? GATE_DEFAULTS.expand;
  const inner = Math.floor(D * expand);
  const keyOrder = options.keyOrder ?? "gguf";
  const expected = new Set<string>();
  for (let i = 0; i < L; i++) for (const part of PARTS) expected.add(PREFIX(i) + part);
  for (const name of tensors.keys()) {
    if (!expected.has(name)) {
      const layer = /^model\.layers\.(\d+)\./.exec(name)?.[1];
      const why = layer !== undefined && Number(layer) >= L
        ? `layer ${layer} does not exist in model ${model.path} (${L} layers)`
        : `expected only model.layers.{i}.self_attn.g_predictors.{${PARTS.join(", ")}}`;
      throw new BadFileError(`${where}: unexpected key ${name}: ${why}`);
    }
  }
  const conv1 = tensors.get(PREFIX(0) + "conv1.weight");
  if (conv1 && conv1.shape.length === 3 && conv1.shape[0] % H === 0 && conv1.shape[0] / H !== inner) {
    const found = conv1.shape[0] / H;
    throw new BadFileError(
      `${where}: conv1.weight has ${found} hidden units per KV head = head dim ${D} × ${found / D}, ` +
        `expected ${D} × expand ${expand} = ${inner} (set the expand option to ${found / D})`,
    );
  }
  const want: Record<typeof PARTS[number], number[]> = {
    "pre_key_norm.weight": [D],
    "post_key_norm.weight": [D],
    "conv1.weight": [H * inner, 2 * D, 1],
    "conv1.bias": [H * inner],
    "conv2.weight": [H, inner, 1],
    "conv2.bias": [H],
  };
  const layers: GateLayer[] = [];
  for (let i = 0; i < L; i++) {
    const get = (part: typeof PARTS[number]) => {
      const name = PREFIX(i) + part;
      const t = tensors.get(name);
      if (!t) {
        throw new BadFileError(`${where}: key ${name} is missing (model ${model.path} has ${L} layers)`);
      }
      const shape = want[part];
      if (t.shape.length !== shape.length || t.shape.some((d, k) => d !== shape[k])) {
        throw new BadFileError(
          `${where}: ${name} has shape [${t.shape.join(", ")}], expected [${shape.join(", ")}] ` +
            `for model ${model.path} (${H} KV heads, head dim ${D}, inner ${inner})`,
        );
      }
      for (let k = 0; k < t.data.length; k++) {
        if (!Number.isFinite(t.data[k])) {
          throw new BadFileError(`${where}: ${name} holds ${t.data[k]} at ${k}`);
        }
      }
      return t.data;
    };
    const layer: GateLayer = {
      preNorm: get("pre_key_norm.weight"),
      postNorm: get("post_key_norm.weight"),
      w1: get("conv1.weight"),
      b1: get("conv1.bias"),
      w2: get("conv2.weight"),
      b2: get("conv2.bias"),
    };
    // W1 rows are [pre (D) ; post (D)]: permuting every run of D values reorders both blocks.
    layers.push(
      keyOrder === "gguf"
        ? {
          ...layer,
          preNorm: hfToGguf(layer.preNorm, D),
          postNorm: hfToGguf(layer.postNorm, D),
          w1: hfToGguf(layer.w1, D),
        }
        : layer,
    );
  }
  const gate: GateWeights = {
    baseArchitecture: model.architecture,
    kvHeads: H,
    headDim: D,
    inner,
    expand,
    inputs: [...GATE_INPUTS],
    activation: GATE_DEFAULTS.activation,
    window: options.window ?? GATE_DEFAULTS.window,
    threshold: options.threshold ?? GATE_DEFAULTS.threshold,
    keyOrder,
    normEpsilon: GATE_DEFAULTS.normEpsilon,
    scoreFloor: GATE_DEFAULTS.scoreFloor,
    baseKHash: await kProjectionHash(model),
    layers,
  };
  const lambda = options.lambda ?? lambdaFromFileName(where);
  if (lambda !== undefined) gate.lambda = lambda;
  checkGate(gate, where);
  return gate;
}

/**
 * A freshly initialised write gate for a model, as the reference trainer starts one: norm weights 1 and
 * PyTorch's default Conv1d initialisation (weights and biases uniform in ±1/sqrt(fan_in), fan_in = 2·D
 * for W1 and inner for w2), drawn from a seeded generator so the same seed gives the same gate. Its scores
 * are ≈ 0.5 for every token, so with τ = 0.1 it admits nearly everything until trained.
 *
 * @module
 */

import { BadFlagError } from "../errors.ts";
import type { GGUFFile } from "../gguf/reader.ts";
import { Rng } from "../engine/rng.ts";
import { hparamsFromGGUF } from "../model/hparams.ts";
import { GATE_DEFAULTS, GATE_INPUTS, type GateLayer, type GateWeights, kProjectionHash } from "./format.ts";

/** Options of {@link initGate}. */
export interface InitGateOptions {
  /** Random seed (default 1). */
  seed?: number;
  /** Hidden width factor (default 4.0): inner = floor(headDim · expand). */
  expand?: number;
  /** Local window W (default 256). */
  window?: number;
  /** Admission threshold τ (default 0.1). */
  threshold?: number;
}

/** A new gate for `model` (bound to it by its K-projection fingerprint), in GGUF key order. */
export async function initGate(model: GGUFFile, options: InitGateOptions = {}): Promise<GateWeights> {
  const hp = hparamsFromGGUF(model);
  const { nHeadKV: H, headDim: D } = hp;
  const expand = options.expand ?? GATE_DEFAULTS.expand;
  const inner = Math.floor(D * expand);
  if (!(inner >= 1 && inner <= 1 << 16)) {
    throw new BadFlagError(
      `gate init: expand ${expand} gives ${inner} hidden units per KV head (1 to 65536)`,
    );
  }
  const rng = new Rng(options.seed ?? 1);
  const uniform = (n: number, fanIn: number) => {
    const bound = 1 / Math.sqrt(fanIn);
    const out = new Float32Array(n);
    for (let i = 0; i < n; i++) out[i] = (2 * rng.next() - 1) * bound;
    return out;
  };
  const layers: GateLayer[] = [];
  for (let i = 0; i < hp.nLayer; i++) {
    layers.push({
      preNorm: new Float32Array(D).fill(1),
      postNorm: new Float32Array(D).fill(1),
      w1: uniform(H * inner * 2 * D, 2 * D),
      b1: uniform(H * inner, 2 * D),
      w2: uniform(H * inner, inner),
      b2: uniform(H, inner),
    });
  }
  return {
    baseArchitecture: model.architecture,
    kvHeads: H,
    headDim: D,
    inner,
    expand,
    inputs: [...GATE_INPUTS],
    activation: GATE_DEFAULTS.activation,
    window: options.window ?? GATE_DEFAULTS.window,
    threshold: options.threshold ?? GATE_DEFAULTS.threshold,
    keyOrder: "gguf",
    normEpsilon: GATE_DEFAULTS.normEpsilon,
    scoreFloor: GATE_DEFAULTS.scoreFloor,
    baseKHash: await kProjectionHash(model),
    layers,
  };
}

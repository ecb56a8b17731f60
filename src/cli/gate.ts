/**
 * `wgkv gate`: make and inspect WG-KV write-gate files.
 * - `gate import CHECKPOINT.pt --model MODEL --out GATE.gguf`: convert a reference-implementation
 *   checkpoint (torch.save state dict), checked against the model and permuted to GGUF key order;
 * - `gate init --model MODEL --out GATE.gguf`: a freshly initialised (untrained) gate;
 * - `gate info GATE.gguf [--model MODEL]`: settings, shapes and the fit to a model.
 *
 * @module
 */

import { BadFlagError } from "../errors.ts";
import { openGGUF } from "../gguf/reader.ts";
import {
  checkGateMatchesModel,
  gateLayerParameters,
  type GateWeights,
  readGate,
  writeGate,
} from "../gate/format.ts";
import { importGate } from "../gate/import.ts";
import { initGate } from "../gate/init.ts";
import { KEY_ORDERS } from "../gate/key_order.ts";
import type { Command } from "./main.ts";
import { choiceFlag, type FlagSpec, helpText, numberFlag, parseFlags, stringFlag } from "./flags.ts";

const COMMON: Record<string, FlagSpec> = {
  model: { type: "string", short: "m", help: "FILE  the GGUF model the gate is for" },
  out: { type: "string", short: "o", help: "FILE  where to write the gate (GGUF)" },
  window: { type: "string", help: "W  local window in tokens, always attended (default 256)" },
  threshold: {
    type: "string",
    help: "T  admission threshold in [0, 1]: a token is kept iff g > T, so 1 keeps none (default 0.1)",
  },
  expand: { type: "string", help: "E  hidden width factor, inner = head_dim · E (default 4)" },
};

const IMPORT_FLAGS: Record<string, FlagSpec> = {
  ...COMMON,
  lambda: {
    type: "string",
    help: "L  sparsity weight it was trained with (default: from a name like *-0.16.pt)",
  },
  "key-order": {
    type: "string",
    help: "ORDER  gguf (default, for GGUF models) or hf (as in the checkpoint)",
  },
  help: { type: "boolean", short: "h", help: "show this help" },
};

const INIT_FLAGS: Record<string, FlagSpec> = {
  ...COMMON,
  seed: { type: "string", short: "s", help: "S  random seed (default 1)" },
  help: { type: "boolean", short: "h", help: "show this help" },
};

const INFO_FLAGS: Record<string, FlagSpec> = {
  model: { type: "string", short: "m", help: "FILE  also check that the gate fits this model" },
  json: { type: "boolean", help: "print one JSON object" },
  help: { type: "boolean", short: "h", help: "show this help" },
};

const USAGE = [
  "usage: wgkv gate <import|init|info> ...",
  "",
  "  wgkv gate import CHECKPOINT.pt --model MODEL --out GATE.gguf",
  "  wgkv gate init --model MODEL --out GATE.gguf [--seed S] [--window W] [--threshold T]",
  "  wgkv gate info GATE.gguf [--model MODEL] [--json]",
  "",
  "(wgkv gate <sub> --help for its flags)",
].join("\n");

function settings(values: Record<string, unknown>) {
  const v = values as Parameters<typeof numberFlag>[0];
  return {
    window: numberFlag(v, "window", undefined, { integer: true, min: 1, max: 1 << 24 }),
    threshold: numberFlag(v, "threshold", undefined, { min: 0, max: 1 }),
    expand: numberFlag(v, "expand", undefined, { min: 0.001, max: 1000 }),
  };
}

function describe(gate: GateWeights): Record<string, unknown> {
  const perLayer = gateLayerParameters(gate);
  return {
    base_architecture: gate.baseArchitecture,
    layers: gate.layers.length,
    kv_heads: gate.kvHeads,
    head_dim: gate.headDim,
    inner: gate.inner,
    expand: gate.expand,
    inputs: gate.inputs,
    activation: gate.activation,
    window: gate.window,
    threshold: gate.threshold,
    lambda: gate.lambda,
    key_order: gate.keyOrder,
    norm_epsilon: gate.normEpsilon,
    score_floor: gate.scoreFloor,
    parameters: perLayer * gate.layers.length,
    base_k_hash: gate.baseKHash,
  };
}

async function runImport(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags("gate import", args, IMPORT_FLAGS);
  if (values.help) {
    console.log(
      helpText(
        "wgkv gate import CHECKPOINT.pt --model MODEL --out GATE.gguf",
        "convert a WG-KV checkpoint",
        IMPORT_FLAGS,
      ),
    );
    return 0;
  }
  if (positionals.length !== 1) throw new BadFlagError("gate import: give exactly one CHECKPOINT.pt");
  const modelPath = stringFlag(values, "model", true);
  const out = stringFlag(values, "out", true);
  const gate = await importGate(positionals[0], modelPath, {
    ...settings(values),
    lambda: numberFlag(values, "lambda", undefined, { min: 0 }),
    keyOrder: choiceFlag(values, "key-order", KEY_ORDERS, "gguf"),
  });
  await writeGate(out, gate);
  console.error(
    `wrote ${out}: ${gate.layers.length} layers × ${gate.kvHeads} KV heads, inner ${gate.inner}, ` +
      `${gate.keyOrder} key order, window ${gate.window}, threshold ${gate.threshold}` +
      (gate.lambda !== undefined ? `, λ ${gate.lambda}` : ""),
  );
  return 0;
}

async function runInit(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags("gate init", args, INIT_FLAGS);
  if (values.help) {
    console.log(
      helpText("wgkv gate init --model MODEL --out GATE.gguf", "write an untrained gate", INIT_FLAGS),
    );
    return 0;
  }
  if (positionals.length > 0) throw new BadFlagError(`gate init: unexpected argument "${positionals[0]}"`);
  const model = await openGGUF(stringFlag(values, "model", true));
  const out = stringFlag(values, "out", true);
  try {
    const seed = numberFlag(values, "seed", 1, { integer: true, min: 0, max: 2 ** 32 - 1 });
    const gate = await initGate(model, { ...settings(values), seed });
    await writeGate(out, gate);
    console.error(
      `wrote ${out}: untrained gate (seed ${seed}), ${gate.layers.length} layers × ${gate.kvHeads} KV heads`,
    );
  } finally {
    model.close();
  }
  return 0;
}

async function runInfo(args: string[]): Promise<number> {
  const { values, positionals } = parseFlags("gate info", args, INFO_FLAGS);
  if (values.help) {
    console.log(helpText("wgkv gate info GATE.gguf [--model MODEL]", "describe a gate file", INFO_FLAGS));
    return 0;
  }
  if (positionals.length !== 1) throw new BadFlagError("gate info: give exactly one GATE file");
  const path = positionals[0];
  const gate = await readGate(path);
  const summary: Record<string, unknown> = { file: path, ...describe(gate) };
  const modelPath = stringFlag(values, "model");
  if (modelPath) {
    const model = await openGGUF(modelPath);
    try {
      await checkGateMatchesModel(gate, path, model);
      summary.fits_model = modelPath;
    } finally {
      model.close();
    }
  }
  if (values.json) {
    console.log(JSON.stringify(summary));
  } else {
    for (const [k, v] of Object.entries(summary)) {
      if (v !== undefined) {
        console.log(
          `${k.padEnd(18)} ${
            Array.isArray(v) ? v.join(", ") : typeof v === "number" ? Number(v.toPrecision(7)) : v
          }`,
        );
      }
    }
  }
  return 0;
}

/** The `gate` subcommand (import, init, info). */
export const gateCommand: Command = {
  summary: "make and inspect WG-KV write-gate files (import a checkpoint, init, info)",
  async main(args) {
    const [sub, ...rest] = args;
    switch (sub) {
      case "import":
        return await runImport(rest);
      case "init":
        return await runInit(rest);
      case "info":
        return await runInfo(rest);
      case undefined:
      case "--help":
      case "-h":
      case "help":
        console.log(USAGE);
        return sub === undefined ? 2 : 0;
      default:
        throw new BadFlagError(`gate: unknown subcommand "${sub}" (import, init, info)`);
    }
  },
};

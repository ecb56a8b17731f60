/**
 * `wgkv demo`: the end-to-end showcase. Without `-m` it makes a seeded synthetic Llama (random weights,
 * so the text is gibberish) and runs the whole pipeline on it: load, tokenize, prefill, decode, with speed
 * figures. With `-m MODEL` it runs that model instead.
 *
 * @module
 */

import { join } from "node:path";
import { existsSync } from "node:fs";
import { BadFlagError } from "../errors.ts";
import { SYNTH_SHAPES, type SynthShape, writeSyntheticModel } from "../model/synth.ts";
import type { Command } from "./main.ts";
import { choiceFlag, type FlagSpec, helpText, numberFlag, parseFlags, stringFlag } from "./flags.ts";
import { loadFromFlags, MODEL_FLAGS, statsLine, writeOut } from "./run.ts";
import { type KvPolicySpec, loadModel } from "../engine/load.ts";
import { openGGUF } from "../gguf/reader.ts";
import { readGate } from "../gate/format.ts";
import { initGate } from "../gate/init.ts";
import { formatBytes } from "../gpu/device.ts";
import type { ParsedFlags } from "./flags.ts";

const FLAGS: Record<string, FlagSpec> = {
  ...MODEL_FLAGS,
  model: { type: "string", short: "m", help: "FILE  run this GGUF instead of the synthetic model" },
  shape: { type: "string", help: `SHAPE  synthetic model shape: ${SYNTH_SHAPES.join("|")} (default tiny)` },
  prompt: { type: "string", short: "p", help: "TEXT  prompt (default: a short story opening)" },
  "n-predict": { type: "string", short: "n", help: "N  tokens to generate (default 64)" },
  gate: { type: "string", help: "FILE  write gate for the WG-KV comparison (default: an untrained one)" },
  window: { type: "string", help: "N  WG-KV local window of the comparison (default 64)" },
  threshold: {
    type: "string",
    help: "T  WG-KV threshold of the comparison, in [0, 1] (default: the gate's, or 0.55)",
  },
  "no-wgkv": { type: "boolean", help: "skip the full-cache vs WG-KV comparison" },
  help: { type: "boolean", short: "h", help: "show this help" },
};

/** Folder for generated models: `$WGKV_CACHE`, else `$XDG_CACHE_HOME/wgkv`, else `~/.cache/wgkv`. */
export function cacheDir(): string {
  const env = Deno.env.get("WGKV_CACHE");
  if (env) return env;
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  const home = Deno.env.get("HOME") ?? ".";
  return join(xdg && xdg !== "" ? xdg : join(home, ".cache"), "wgkv");
}

/** The `demo` subcommand. */
export const demoCommand: Command = {
  summary: "run the whole pipeline end to end (on a synthetic random-weight model unless -m is given)",
  async main(args) {
    const { values, positionals } = parseFlags("demo", args, FLAGS);
    if (values.help) {
      console.log(helpText("wgkv demo [-m MODEL] [flags]", demoCommand.summary, FLAGS));
      return 0;
    }
    if (positionals.length > 0) throw new BadFlagError(`demo: unexpected argument "${positionals[0]}"`);
    const nPredict = numberFlag(values, "n-predict", 64, { integer: true, min: 1 });
    const prompt = stringFlag(values, "prompt") ?? "Once upon a time, in a small village by the sea,";
    if (values.model === undefined) {
      const shape: SynthShape = choiceFlag(values, "shape", SYNTH_SHAPES, "tiny");
      const type = "f16";
      const dir = cacheDir();
      const path = join(dir, `synthetic-${shape}-${type}-seed1.gguf`);
      if (!existsSync(path)) {
        await Deno.mkdir(dir, { recursive: true });
        console.error(`demo: writing a synthetic ${shape} Llama (${type}, seed 1) to ${path}`);
        await writeSyntheticModel({ shape, type, out: path, seed: 1 });
      }
      console.error(
        "demo: this model has RANDOM weights (no trained model is bundled): the text is gibberish; " +
          "the speed figures and the pipeline are real. Pass -m MODEL.gguf to run a real model.",
      );
      values.model = path;
    }
    // The first run uses a full cache; --gate/--window/--threshold belong to the comparison after it.
    const model = await loadFromFlags({
      ...values,
      gate: undefined,
      window: undefined,
      threshold: undefined,
    });
    let gpu = false;
    try {
      gpu = model.backend.kind === "webgpu";
      const session = model.session();
      const ids = model.tokenizer.encode(prompt, { addBos: model.tokenizer.addBos });
      await writeOut(prompt);
      const gen = session.generate(ids, { maxTokens: nPredict, temperature: 0, ignoreEos: true });
      let r = await gen.next();
      while (!r.done) {
        await writeOut(r.value.text);
        r = await gen.next();
      }
      await writeOut("\n");
      console.error(statsLine(r.value));
    } finally {
      model.close();
    }
    if (!gpu || values["no-wgkv"]) return 0;
    await compareKvPolicies(values);
    return 0;
  },
};

/** A few paragraphs of our own, long enough that most tokens leave a small local window. */
const LONG_TEXT = [
  "The harbour woke before the town did. Fishing boats slid out past the breakwater while the lamps along",
  "the quay were still burning, and the gulls followed them in long, patient circles. On the hill above,",
  "the bakery had been open for an hour; its windows steamed, and the smell of bread drifted down the",
  "narrow streets to the water. Mara, who kept the lighthouse, walked down every morning to buy two loaves",
  "and to hear what the night had brought: a storm far to the west, a ship that had lost a mast, a whale",
  "seen off the northern rocks. She wrote each piece of news in a blue notebook, with the date and the",
  "hour, because her grandmother had done the same, and her grandmother's mother before her. The notebooks",
  "filled a shelf in the lamp room now, forty years of weather and small events, and on winter evenings",
  "she read them aloud to herself, listening for patterns in the wind and the tides and the lives of the",
  "people who had lived by them. Some entries were only a line long. Others ran for pages: the winter the",
  "harbour froze, the summer the circus came by boat, the night the lamp failed and every house on the",
  "hill put a candle in its window until morning. She liked those best.",
].join(" ");

/**
 * Prefills the same long text under the full cache and under WG-KV (with the gate from `--gate`, else a
 * freshly initialised, untrained one) and prints the KV memory and speed side by side.
 */
async function compareKvPolicies(values: ParsedFlags["values"]): Promise<void> {
  const path = String(values.model);
  const file = await openGGUF(path);
  let gate;
  try {
    gate = values.gate ? await readGate(String(values.gate), file) : await initGate(file, { seed: 1 });
  } finally {
    file.close();
  }
  const window = numberFlag(values, "window", 64, { integer: true, min: 1 });
  const threshold = numberFlag(values, "threshold", values.gate ? gate.threshold : 0.55, {
    min: 0,
    max: 1,
  });
  console.error(
    `\ndemo: the same ${LONG_TEXT.length}-character text under a full KV cache and under Write-Gated KV ` +
      `(window ${window}, threshold ${Number(threshold.toPrecision(6))}, ${
        values.gate
          ? "gate " + values.gate
          : "an UNTRAINED gate: this shows the mechanism and the memory accounting, not quality"
      })`,
  );
  const rows: string[] = [];
  for (const kv of [{ kind: "full" }, { kind: "wgkv", gate, window, threshold }] as KvPolicySpec[]) {
    const model = await loadModel(path, { kv, maxBatch: 64, kvGlobalFraction: 1 });
    try {
      const ids = model.tokenizer.encode(LONG_TEXT, { addBos: model.tokenizer.addBos });
      const session = model.session();
      for await (const _ of session.generate(ids, { maxTokens: 32, temperature: 0, ignoreEos: true })) {
        // generated text is not the point here
      }
      const s = session.lastStats!;
      const u = model.backend.kvUsage!();
      const admitted = u.dual
        ? (100 * u.dual.admittedFraction.reduce((a, b) => a + b, 0) / u.dual.admittedFraction.length).toFixed(
          1,
        ) + "%"
        : "100%";
      rows.push(
        `${kv.kind.padEnd(5)} ${String(s.promptTokens).padStart(6)} ${
          ((s.promptTokens / s.prefillMs) * 1000).toFixed(1).padStart(11)
        } ${(((s.generatedTokens - 1) / s.decodeMs) * 1000).toFixed(1).padStart(10)} ${
          formatBytes(u.usedBytes).padStart(12)
        } ${formatBytes(u.fullBytes).padStart(12)} ${admitted.padStart(9)}`,
      );
    } finally {
      model.close();
    }
  }
  console.error("kv    prompt  prefill/s   decode/s    KV in use   full cache  admitted");
  for (const r of rows) console.error(r);
  console.error(
    "demo: at a few hundred tokens the write gate's own work costs about what the smaller cache saves; the " +
      "speed-ups grow with the context (`deno task bench --kv full,wgkv --kv-prompts 32768 --admit-target 0.2` on a GPU)",
  );
}

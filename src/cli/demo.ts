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

const FLAGS: Record<string, FlagSpec> = {
  ...MODEL_FLAGS,
  model: { type: "string", short: "m", help: "FILE  run this GGUF instead of the synthetic model" },
  shape: { type: "string", help: `SHAPE  synthetic model shape: ${SYNTH_SHAPES.join("|")} (default tiny)` },
  prompt: { type: "string", short: "p", help: "TEXT  prompt (default: a short story opening)" },
  "n-predict": { type: "string", short: "n", help: "N  tokens to generate (default 64)" },
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
    const model = await loadFromFlags(values);
    try {
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
      return 0;
    } finally {
      model.close();
    }
  },
};

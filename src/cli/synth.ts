/**
 * `wgkv synth`: write a Llama GGUF with seeded random weights at real shapes (for benchmarks and tests
 * where no trained weights exist).
 *
 * @module
 */

import { BadFlagError } from "../errors.ts";
import { SYNTH_SHAPES, SYNTH_TYPES, writeSyntheticModel } from "../model/synth.ts";
import type { Command } from "./main.ts";
import { choiceFlag, type FlagSpec, helpText, numberFlag, parseFlags, stringFlag } from "./flags.ts";

const FLAGS: Record<string, FlagSpec> = {
  shape: { type: "string", help: `SHAPE  ${SYNTH_SHAPES.join("|")} (default tiny)` },
  type: { type: "string", help: `TYPE  weight type: ${SYNTH_TYPES.join("|")} (default f16)` },
  out: { type: "string", short: "o", help: "FILE  where to write the GGUF" },
  seed: { type: "string", short: "s", help: "S  random seed (default 1)" },
  vocab: { type: "string", help: "FILE  copy the tokenizer of this GGUF (default: a generated vocabulary)" },
  tied: { type: "boolean", help: "tie the output matrix to the token embeddings" },
  help: { type: "boolean", short: "h", help: "show this help" },
};

/** The `synth` subcommand. */
export const synthCommand: Command = {
  summary: "write a synthetic Llama GGUF with random weights at a real shape",
  async main(args) {
    const { values, positionals } = parseFlags("synth", args, FLAGS);
    if (values.help) {
      console.log(helpText("wgkv synth --shape SHAPE --type TYPE --out FILE", synthCommand.summary, FLAGS));
      return 0;
    }
    if (positionals.length > 0) throw new BadFlagError(`synth: unexpected argument "${positionals[0]}"`);
    const out = stringFlag(values, "out", true);
    const shape = choiceFlag(values, "shape", SYNTH_SHAPES, "tiny");
    const type = choiceFlag(values, "type", SYNTH_TYPES, "f16");
    const seed = numberFlag(values, "seed", 1, { integer: true });
    let last = 0;
    await writeSyntheticModel({
      shape,
      type,
      out,
      seed,
      vocabFrom: stringFlag(values, "vocab"),
      tiedOutput: values.tied ? true : undefined,
      onProgress: (done, total) => {
        const now = performance.now();
        if (now - last > 500 || done === total) {
          last = now;
          console.error(`synth: ${((100 * done) / total).toFixed(0)}% (${(done / 2 ** 20).toFixed(0)} MiB)`);
        }
      },
    });
    console.error(`wrote ${out} (${shape}, ${type}, seed ${seed}; random weights)`);
    return 0;
  },
};

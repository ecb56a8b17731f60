/**
 * `wgkv tokenize -m MODEL TEXT`: show how a model's tokenizer splits text.
 *
 * @module
 */

import { BadFlagError } from "../errors.ts";
import { openGGUF } from "../gguf/reader.ts";
import { tokenizerFromMetadata } from "../tokenizer/tokenizer.ts";
import type { Command } from "./main.ts";
import { type FlagSpec, helpText, parseFlags, stringFlag } from "./flags.ts";

const FLAGS: Record<string, FlagSpec> = {
  model: { type: "string", short: "m", help: "FILE  GGUF model (or vocabulary-only GGUF)" },
  ids: { type: "boolean", help: "print only a JSON array of token ids" },
  special: { type: "boolean", help: "turn special-token text such as <|eot_id|> into its id" },
  "no-bos": { type: "boolean", help: "do not add the BOS token even if the model asks for it" },
  help: { type: "boolean", short: "h", help: "show this help" },
};

/** The `tokenize` subcommand. */
export const tokenizeCommand: Command = {
  summary: "split text into tokens with a model's tokenizer",
  async main(args) {
    const { values, positionals } = parseFlags("tokenize", args, FLAGS);
    if (values.help) {
      console.log(
        helpText("wgkv tokenize -m MODEL [--ids] [--special] TEXT", tokenizeCommand.summary, FLAGS),
      );
      return 0;
    }
    if (positionals.length !== 1) throw new BadFlagError("tokenize: give the TEXT as one argument");
    const file = await openGGUF(stringFlag(values, "model", true));
    try {
      const tok = tokenizerFromMetadata(file.metadata, file.path);
      const ids = tok.encode(positionals[0], {
        addBos: values["no-bos"] ? false : tok.addBos,
        parseSpecial: values.special === true,
      });
      if (values.ids) {
        console.log(JSON.stringify(ids));
      } else {
        const utf8 = new TextDecoder();
        for (const id of ids) {
          console.log(
            `${String(id).padStart(6)} ${
              JSON.stringify(utf8.decode(tok.tokenToPiece(id, { special: true })))
            }`,
          );
        }
      }
      return 0;
    } finally {
      file.close();
    }
  },
};

/**
 * `wgkv batch`: summarise many documents with one loaded model, one JSON line per document on stdout or
 * appended to `--out` (fsync'd as each is done, so an interrupted run resumes where it stopped).
 *
 * @module
 */

import { BadFileError, BadFlagError, firstLine } from "../errors.ts";
import {
  type BatchRecord,
  DEFAULT_INSTRUCTION,
  readBatchDocuments,
  resumeResults,
  summarizeDocuments,
} from "../engine/batch.ts";
import type { Command } from "./main.ts";
import { prefillReporter } from "./progress.ts";
import { Interrupt } from "./interrupt.ts";
import { type FlagSpec, helpText, parseFlags, stringFlag } from "./flags.ts";
import {
  generationOptions,
  kvJson,
  loadFromFlags,
  loadOptionsFromFlags,
  MODEL_FLAGS,
  printProfile,
  SAMPLING_FLAGS,
  writeOut,
} from "./run.ts";

const FLAGS: Record<string, FlagSpec> = {
  ...MODEL_FLAGS,
  out: { type: "string", short: "o", help: "FILE  append results here (resumes a run); default stdout" },
  instruction: { type: "string", help: `TEXT  put before each document (default "${DEFAULT_INSTRUCTION}")` },
  ...SAMPLING_FLAGS,
  "n-predict": { type: "string", short: "n", help: "N  most tokens per summary (default 256)" },
  temp: { type: "string", help: "T  temperature, 0 = greedy (default 0)" },
  help: { type: "boolean", short: "h", help: "show this help" },
};

/**
 * Writes all of `bytes` to `file` (one write unless the system takes less) and flushes it to disk; a
 * system error (a full disk, say) is a {@link BadFileError} naming `path`.
 */
async function appendDurably(file: Deno.FsFile, bytes: Uint8Array, path: string): Promise<void> {
  try {
    let off = 0;
    while (off < bytes.length) off += await file.write(bytes.subarray(off));
    await file.sync();
  } catch (e) {
    throw new BadFileError(`${path}: cannot append the result (${firstLine(e)})`, { cause: e });
  }
}

/** The `batch` subcommand. */
export const batchCommand: Command = {
  summary: "summarise text and JSONL documents into JSON lines (resumable with --out)",
  async main(args) {
    const { values, positionals } = parseFlags("batch", args, FLAGS);
    if (values.help) {
      console.log(
        helpText("wgkv batch -m MODEL [--out FILE] [-n N] [flags] INPUT...", batchCommand.summary, FLAGS),
      );
      console.log(
        '\nINPUT: a text file (one document, id = its path) or a .jsonl file of {"id": "...", "text": "..."} lines',
      );
      return 0;
    }
    if (positionals.length === 0) throw new BadFlagError("batch: give at least one input file");
    if (values["n-predict"] === undefined) values["n-predict"] = "256";
    if (values.temp === undefined) values.temp = "0";
    const generation = generationOptions(values);
    if (generation.maxTokens === Infinity) {
      throw new BadFlagError("--n-predict: batch needs a limit per summary (-1 means none)");
    }
    const loadOptions = loadOptionsFromFlags(values); // flag mistakes before any file is read or created
    const instruction = stringFlag(values, "instruction") ?? DEFAULT_INSTRUCTION;
    const outPath = stringFlag(values, "out");
    const docs = await readBatchDocuments(positionals);
    const done = outPath === undefined ? new Set<string>() : await resumeResults(outPath);
    const todo = docs.filter((d) => !done.has(d.id));
    if (done.size > 0) {
      console.error(`batch: ${docs.length - todo.length} of ${docs.length} documents already in ${outPath}`);
    }
    if (todo.length === 0) return 0;

    // The results file opens before the model loads: a path that cannot be written fails at once.
    let out: Deno.FsFile | undefined;
    if (outPath !== undefined) {
      try {
        out = await Deno.open(outPath, { append: true, create: true });
      } catch (e) {
        throw new BadFileError(
          `${outPath}: cannot open for appending (${firstLine(e)})`,
        );
      }
    }
    const model = await loadFromFlags(values, undefined, loadOptions).catch((e) => {
      out?.close();
      throw e;
    });
    const interrupt = new Interrupt("the batch");
    try {
      const encoder = new TextEncoder();
      const signal = interrupt.reply();
      const records = summarizeDocuments(model, todo, {
        instruction,
        generation: { ...generation, signal },
        onPrefill: (doc) => prefillReporter(`${doc.id}: prefill`),
        onTruncated: (doc, t) =>
          console.error(
            `${doc.id}: too long for the context of ${model.backend.contextLength} with -n ${generation.maxTokens}; ` +
              `kept ${t.toTokens} of ${t.fromTokens} document tokens (middle cut out)`,
          ),
      });
      let index = 0;
      for await (const record of records) {
        index++;
        const line: BatchRecord & { kv?: Record<string, unknown> } = "error" in record
          ? record
          : { ...record, kv: kvJson(model) };
        const text = JSON.stringify(line) + "\n";
        if (out) await appendDurably(out, encoder.encode(text), outPath!);
        else await writeOut(text);
        console.error(`[${index}/${todo.length}] ${progress(record)}`);
      }
      printProfile(model);
      if (signal.aborted) {
        console.error(
          `batch: stopped; ${index} of ${todo.length} documents done` +
            (outPath === undefined ? "" : ` (the same command resumes from ${outPath})`),
        );
        return 130;
      }
      return 0;
    } finally {
      interrupt.close();
      out?.close();
      model.close();
    }
  },
};

function progress(r: BatchRecord): string {
  if ("error" in r) return `${r.id}: error: ${r.error}`;
  const rate = r.decode_ms > 0 ? ((r.generated_tokens - 1) / r.decode_ms) * 1000 : 0;
  return `${r.id}: ${r.prompt_tokens} → ${r.generated_tokens} tokens, ${rate.toFixed(1)} tok/s`;
}

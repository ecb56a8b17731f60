/**
 * Batch summarisation: documents read from text and JSONL files, each summarised in a fresh session of one
 * loaded model, with results kept as JSON lines that a later run can resume from.
 *
 * @module
 */

import { BadFileError, firstLine, OutOfMemoryError } from "../errors.ts";
import { renderChat } from "../chat/template.ts";
import type { Model } from "./load.ts";
import type { GenerateOptions } from "./session.ts";
import type { PrefillProgress } from "./backend.ts";

/** One document to summarise. */
export interface BatchDocument {
  /** Identifier written with the result (a text file's path, or the `id` of a JSONL line). */
  id: string;
  /** The document's text. */
  text: string;
}

/** The result of one document, as written on one line of the results file. */
export interface BatchSummary {
  /** The document's identifier. */
  id: string;
  /** The generated summary (surrounding whitespace trimmed). */
  summary: string;
  /** Tokens of the rendered prompt. */
  prompt_tokens: number;
  /** Tokens generated. */
  generated_tokens: number;
  /** Milliseconds of prefill. */
  prefill_ms: number;
  /** Milliseconds of decoding after the first token. */
  decode_ms: number;
  /** Why generation stopped ("eos", "length", "stop" …). */
  stop_reason: string;
}

/** A document that could not be summarised (e.g. its prompt cannot fit the context). */
export interface BatchFailure {
  /** The document's identifier. */
  id: string;
  /** What went wrong, in one line. */
  error: string;
}

/** What a batch run produces per document. */
export type BatchRecord = BatchSummary | BatchFailure;

/** The instruction put before each document when none is given. */
export const DEFAULT_INSTRUCTION = "Please summarize the following text:";

/** Text put where the middle of a document too long for the context was cut out. */
export const TRUNCATION_MARK = " … ";

/**
 * Reads the documents of `paths`: a `.jsonl` file holds one `{"id": "...", "text": "..."}` object per
 * non-empty line; any other file is one document whose id is its path. A missing or empty file, a
 * malformed line or an id seen twice is a {@link BadFileError} naming the file (and line).
 */
export async function readBatchDocuments(paths: readonly string[]): Promise<BatchDocument[]> {
  const docs: BatchDocument[] = [];
  const seen = new Map<string, string>();
  const add = (doc: BatchDocument, where: string) => {
    const first = seen.get(doc.id);
    if (first !== undefined) throw new BadFileError(`${where}: duplicate id "${doc.id}" (first in ${first})`);
    seen.set(doc.id, where);
    docs.push(doc);
  };
  for (const path of paths) {
    let content: string;
    try {
      content = await Deno.readTextFile(path);
    } catch (e) {
      throw new BadFileError(`${path}: cannot read the input file (${firstLine(e)})`);
    }
    if (content.trim() === "") throw new BadFileError(`${path}: the input file is empty`);
    if (!path.toLowerCase().endsWith(".jsonl")) {
      add({ id: path, text: content }, path);
      continue;
    }
    const lines = content.split("\n");
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i].trim();
      if (line === "") continue;
      const where = `${path}:${i + 1}`;
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch (e) {
        throw new BadFileError(`${where}: not valid JSON (${firstLine(e)})`);
      }
      const obj = value as { id?: unknown; text?: unknown } | null;
      if (obj === null || typeof obj !== "object" || Array.isArray(obj)) {
        throw new BadFileError(`${where}: expected an object {"id": "...", "text": "..."}`);
      }
      if (typeof obj.id !== "string" || obj.id === "") {
        throw new BadFileError(`${where}: "id" must be a non-empty string`);
      }
      if (typeof obj.text !== "string") throw new BadFileError(`${where}: "text" must be a string`);
      add({ id: obj.id, text: obj.text }, where);
    }
  }
  return docs;
}

/**
 * Prepares `path` for appending results: returns the ids already recorded in it, after cutting off a
 * trailing line without its newline (left by an interrupted run). A missing file holds no ids. A path that
 * is not a regular file, or a complete line that is not a result object, is a {@link BadFileError} naming it.
 */
export async function resumeResults(path: string): Promise<Set<string>> {
  // A device or FIFO would be read without end (or block), then truncated: the results go to a file.
  const kind = await Deno.stat(path).catch(() => undefined);
  if (kind !== undefined && !kind.isFile) {
    throw new BadFileError(
      `${path}: not a regular file (the results file is read back to resume; without --out they go to stdout)`,
    );
  }
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return new Set();
    throw new BadFileError(`${path}: cannot read the results file (${firstLine(e)})`);
  }
  const end = bytes.lastIndexOf(0x0a) + 1;
  if (end < bytes.length) await Deno.truncate(path, end);
  const done = new Set<string>();
  const lines = new TextDecoder().decode(bytes.subarray(0, end)).split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() === "") continue;
    let id: unknown;
    try {
      id = (JSON.parse(lines[i]) as { id?: unknown } | null)?.id;
    } catch {
      id = undefined;
    }
    if (typeof id !== "string") {
      throw new BadFileError(`${path}:${i + 1}: not a result line (expected a JSON object with an "id")`);
    }
    done.add(id);
  }
  return done;
}

/** A document's prompt, ready to prefill. */
export interface BatchPrompt {
  /** Token ids of the rendered prompt (BOS included when the model wants it). */
  ids: number[];
  /** When the document was cut to fit: its token count before and after. */
  truncated?: { fromTokens: number; toTokens: number };
}

/** The rendered, tokenized user message `${instruction}\n\n${text}`. */
function encodeMessage(model: Model, instruction: string, text: string): number[] {
  const rendered = renderChat(model.file.metadata, [{ role: "user", content: `${instruction}\n\n${text}` }], {
    addGenerationPrompt: true,
    source: model.file.path,
  });
  return model.tokenizer.encode(rendered.text, { addBos: !rendered.startsWithBos, parseSpecial: true });
}

/**
 * Builds the prompt of `doc` so that it plus `maxTokens` generated tokens fit `contextLength`: when too
 * long, tokens are cut from the middle of the document (head and tail kept, joined by
 * {@link TRUNCATION_MARK}). Throws {@link OutOfMemoryError} when even an empty document does not fit.
 */
export function buildBatchPrompt(
  model: Model,
  doc: BatchDocument,
  instruction: string,
  maxTokens: number,
  contextLength: number = model.backend.contextLength,
): BatchPrompt {
  const limit = contextLength - maxTokens;
  const full = encodeMessage(model, instruction, doc.text);
  if (full.length <= limit) return { ids: full };
  const docIds = model.tokenizer.encode(doc.text, { addBos: false });
  const overhead = encodeMessage(model, instruction, TRUNCATION_MARK).length;
  let keep = Math.min(docIds.length - 1, limit - overhead);
  // Re-tokenizing the joined text may merge differently at the seams: shrink until it fits.
  while (keep > 0) {
    const head = Math.ceil(keep / 2);
    const tail = keep - head;
    const text = model.tokenizer.decode(docIds.slice(0, head)) + TRUNCATION_MARK +
      (tail > 0 ? model.tokenizer.decode(docIds.slice(docIds.length - tail)) : "");
    const ids = encodeMessage(model, instruction, text);
    if (ids.length <= limit) return { ids, truncated: { fromTokens: docIds.length, toTokens: keep } };
    keep -= Math.max(1, ids.length - limit);
  }
  throw new OutOfMemoryError(
    `the prompt cannot fit: ${overhead} tokens of instruction and template plus -n ${maxTokens} exceed ` +
      `the context of ${contextLength} (raise -c/--ctx or lower -n)`,
  );
}

/** Options of {@link summarizeDocuments}. */
export interface BatchOptions {
  /** Text put before each document; default {@link DEFAULT_INSTRUCTION}. */
  instruction?: string;
  /** Sampling and length of each summary (`maxTokens` default 256). */
  generation?: GenerateOptions;
  /** A progress hook for the prefill of each document's prompt (see `GenerateOptions.onPrefill`). */
  onPrefill?: (doc: BatchDocument) => PrefillProgress | undefined;
  /** Called when a document's middle was cut out to fit the context. */
  onTruncated?: (doc: BatchDocument, truncated: { fromTokens: number; toTokens: number }) => void;
}

/**
 * Summarises `docs` one after the other, each in a fresh session of `model`, yielding each record as soon
 * as its document is done. A document that cannot fit the context yields a {@link BatchFailure}; other
 * errors end the run. An aborted `generation.signal` ends it too, without a record of the document it
 * stopped.
 */
export async function* summarizeDocuments(
  model: Model,
  docs: Iterable<BatchDocument>,
  options: BatchOptions = {},
): AsyncGenerator<BatchRecord> {
  const instruction = options.instruction ?? DEFAULT_INSTRUCTION;
  const generation = { ...options.generation, maxTokens: options.generation?.maxTokens ?? 256 };
  const session = model.session();
  for (const doc of docs) {
    let prompt: BatchPrompt;
    try {
      prompt = buildBatchPrompt(model, doc, instruction, generation.maxTokens);
    } catch (e) {
      if (!(e instanceof OutOfMemoryError)) throw e;
      yield { id: doc.id, error: e.message };
      continue;
    }
    if (prompt.truncated) options.onTruncated?.(doc, prompt.truncated);
    session.reset();
    let summary = "";
    const gen = session.generate(prompt.ids, { ...generation, onPrefill: options.onPrefill?.(doc) });
    let r = await gen.next();
    while (!r.done) {
      summary += r.value.text;
      r = await gen.next();
    }
    const stats = r.value;
    // Stopped by the caller's signal: this document is not done, and no other starts.
    if (stats.stopReason === "abort") return;
    yield {
      id: doc.id,
      summary: summary.trim(),
      prompt_tokens: stats.promptTokens,
      generated_tokens: stats.generatedTokens,
      prefill_ms: stats.prefillMs,
      decode_ms: stats.decodeMs,
      stop_reason: stats.stopReason,
    };
  }
}

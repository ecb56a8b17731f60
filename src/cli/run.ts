/**
 * `wgkv run`: generate text from a prompt, streaming it to stdout; statistics on stderr (or one JSON
 * object on stdout with `--json`).
 *
 * @module
 */

import { BadFileError, BadFlagError, firstLine } from "../errors.ts";
import {
  contextForPrompt,
  DEFAULT_GPU_CONTEXT,
  loadModel,
  type Model,
  type ModelHeader,
  readModelHeader,
} from "../engine/load.ts";
import { Sampler } from "../engine/sampling.ts";
import type { GenerationStats } from "../engine/session.ts";
import { foldLayers, formatProfile } from "../gpu/profiler.ts";
import { formatBytes } from "../gpu/device.ts";
import { PAGE_TOKENS } from "../kv/page_pool.ts";
import type { KvPolicySpec, LoadOptions } from "../engine/load.ts";
import type { Command } from "./main.ts";
import {
  choiceFlag,
  type FlagSpec,
  helpText,
  numberFlag,
  type ParsedFlags,
  parseFlags,
  stringFlag,
} from "./flags.ts";
import { prefillReporter } from "./progress.ts";
import { Interrupt } from "./interrupt.ts";

/** Flags shared by every command that loads a model for generation. */
export const MODEL_FLAGS: Record<string, FlagSpec> = {
  model: { type: "string", short: "m", help: "FILE  GGUF model to load" },
  ctx: {
    type: "string",
    short: "c",
    help:
      "N  context length to allocate (default: the model's, at most 4096 on the GPU; `run` grows it to fit)",
  },
  backend: { type: "string", help: "auto|cpu|webgpu  where to run (default auto)" },
  verbose: { type: "boolean", short: "v", help: "print model and memory details on stderr" },
  profile: { type: "boolean", help: "time every GPU kernel and print a table on stderr at the end" },
  batch: {
    type: "string",
    short: "b",
    help: "N  prompt tokens per prefill step on the GPU (default 2048 with the full cache, else 512)",
  },
  "f32-decode": {
    type: "boolean",
    help: "decode quantised weights in f32 (default on a GPU: 8-bit integer dot products, like llama.cpp)",
  },
  "f32-prefill": {
    type: "boolean",
    help: "prefill quantised weights in f32 (default on a GPU: 8-bit integer dot products, like llama.cpp)",
  },
  "coop-prefill": {
    type: "boolean",
    help: "prefill products on the GPU's matrix units (cooperative matrices), where it has working ones",
  },
  kv: { type: "string", help: "full|wgkv|window|sink|random  KV cache policy (default full)" },
  gate: { type: "string", help: "FILE  write-gate GGUF for --kv wgkv (from `wgkv gate import`)" },
  window: { type: "string", help: "N  local window in tokens (default: the gate's, else 256)" },
  threshold: {
    type: "string",
    help: "T  admit a token iff its gate score g > T; T in [0, 1], 1 admits none (default: the gate's)",
  },
  sinks: { type: "string", help: "N  --kv sink: first tokens always kept (default 4)" },
  admit: { type: "string", help: "RATE  --kv random: share of older tokens kept (default 0.2)" },
  "kv-global": {
    type: "string",
    help: "F  share of a full cache reserved for admitted tokens (default: by policy, 0.5 for wgkv)",
  },
  stats: { type: "boolean", help: "print KV memory vs a full cache and admitted shares per layer/head" },
};

/** Largest `--seed`: seeds are 32-bit. */
const MAX_SEED = 2 ** 32 - 1;

/** The KV policy asked for by `--kv` and its flags. */
export function kvPolicyFromFlags(values: ParsedFlags["values"]): KvPolicySpec {
  const kind = choiceFlag(values, "kv", ["full", "wgkv", "window", "sink", "random"] as const, "full");
  const window = numberFlag(values, "window", undefined, { integer: true, min: 1 });
  const gate = stringFlag(values, "gate");
  if (gate !== undefined && kind !== "wgkv") throw new BadFlagError("--gate is only used with --kv wgkv");
  // A setting of another policy than the one asked for would be silently ignored.
  const usedBy: [string, string][] = [["threshold", "wgkv"], ["sinks", "sink"], ["admit", "random"]];
  for (const [flag, policy] of usedBy) {
    if (values[flag] !== undefined && kind !== policy) {
      throw new BadFlagError(`--${flag} is only used with --kv ${policy}`);
    }
  }
  if (values["kv-global"] !== undefined && kind === "full") {
    throw new BadFlagError(
      "--kv-global needs --kv wgkv, window, sink or random (a full cache keeps every token)",
    );
  }
  switch (kind) {
    case "full":
      if (window !== undefined) throw new BadFlagError("--window needs --kv wgkv, window, sink or random");
      return { kind };
    case "wgkv":
      if (gate === undefined) throw new BadFlagError("--kv wgkv needs --gate FILE (see `wgkv gate --help`)");
      return {
        kind,
        gate,
        window,
        threshold: numberFlag(values, "threshold", undefined, { min: 0, max: 1 }),
      };
    case "window":
      return { kind, window };
    case "sink":
      return { kind, window, sinks: numberFlag(values, "sinks", undefined, { integer: true, min: 0 }) };
    case "random":
      return {
        kind,
        window,
        rate: numberFlag(values, "admit", undefined, { min: 0, max: 1 }),
        seed: numberFlag(values, "seed", undefined, { integer: true, min: 0, max: MAX_SEED }),
      };
  }
}

/** The KV usage as plain JSON (undefined for the CPU backend). */
export function kvJson(model: Model): Record<string, unknown> | undefined {
  const u = model.backend.kvUsage?.();
  if (!u) return undefined;
  return {
    policy: u.policy,
    tokens: u.tokens,
    used_bytes: u.usedBytes,
    full_bytes: u.fullBytes,
    admitted_fraction: u.dual ? Array.from(u.dual.admittedFraction) : undefined,
    global_tokens: u.dual ? Array.from(u.dual.globalTokens) : undefined,
  };
}

/** Prints the KV cache's memory against a full cache and, for WG-KV, the admitted share per layer/head. */
export function printKvStats(model: Model, perHead: boolean): void {
  const usage = model.backend.kvUsage?.();
  if (!usage) return;
  const saved = usage.fullBytes > 0 ? 100 * (1 - usage.usedBytes / usage.fullBytes) : 0;
  console.error(
    `KV cache (${usage.policy}): ${
      formatBytes(usage.usedBytes)
    } in use for ${usage.tokens} tokens; a full cache ` +
      `would use ${formatBytes(usage.fullBytes)} (${
        saved >= 0 ? `${saved.toFixed(1)}% saved` : `${(-saved).toFixed(1)}% more`
      })`,
  );
  const d = usage.dual;
  if (!d) return;
  const h = model.hparams;
  if (saved < 0) {
    const ringTokens = (d.ringPages * PAGE_TOKENS) / (h.nLayer * h.nHeadKV);
    console.error(
      `  (each layer and KV head holds its local ring of ${ringTokens} tokens, the window and a prefill step, ` +
        "from the first token: the cache saves memory once the context outgrows it)",
    );
  }
  const mean = d.admittedFraction.reduce((a, b) => a + b, 0) / d.admittedFraction.length;
  console.error(`admitted: ${(100 * mean).toFixed(1)}% of tokens on average over layers and KV heads`);
  if (!perHead) return;
  for (let l = 0; l < h.nLayer; l++) {
    const row = Array.from(d.admittedFraction.subarray(l * h.nHeadKV, (l + 1) * h.nHeadKV));
    console.error(
      `  layer ${String(l).padStart(3)}: ${row.map((f) => `${(100 * f).toFixed(0).padStart(3)}%`).join(" ")}`,
    );
  }
}

/** Sampling flags, named as in llama.cpp. */
export const SAMPLING_FLAGS: Record<string, FlagSpec> = {
  "n-predict": {
    type: "string",
    short: "n",
    help: "N  tokens to generate (default 128; -1: until the end of text or a full context)",
  },
  temp: { type: "string", help: "T  temperature, 0 = greedy (default 0.8)" },
  "top-k": { type: "string", help: "K  top-k, 0 = off (default 40)" },
  "top-p": { type: "string", help: "P  top-p, 1 = off (default 0.95)" },
  "min-p": { type: "string", help: "P  min-p, 0 = off (default 0.05)" },
  "repeat-penalty": { type: "string", help: "R  repetition penalty, 1 = off (default 1)" },
  "repeat-last-n": { type: "string", help: "N  tokens the penalty looks back (default 64)" },
  seed: { type: "string", short: "s", help: "S  random seed (default: random)" },
  stop: { type: "string", multiple: true, help: "TEXT  stop before this text (repeatable)" },
  "ignore-eos": { type: "boolean", help: "keep generating past end-of-text tokens" },
};

const FLAGS: Record<string, FlagSpec> = {
  ...MODEL_FLAGS,
  prompt: { type: "string", short: "p", help: "TEXT  the prompt (BOS is added as the model asks)" },
  file: { type: "string", short: "f", help: "FILE  read the prompt from a file (- reads standard input)" },
  json: { type: "boolean", help: "print one JSON object (text and statistics) instead of streaming" },
  ...SAMPLING_FLAGS,
  help: { type: "boolean", short: "h", help: "show this help" },
};

/**
 * The load options the model flags ask for (every value checked, before any file is read), progress
 * going to stderr.
 */
export function loadOptionsFromFlags(values: ParsedFlags["values"]): LoadOptions {
  const backend = choiceFlag(values, "backend", ["auto", "cpu", "webgpu"] as const, "auto");
  for (const flag of ["profile", "coop-prefill"]) {
    if (backend === "cpu" && values[flag] === true) {
      throw new BadFlagError(`--${flag} needs the WebGPU backend, not --backend cpu`);
    }
  }
  return {
    backend,
    contextLength: numberFlag(values, "ctx", undefined, { integer: true, min: 1 }),
    maxBatch: numberFlag(values, "batch", undefined, { integer: true, min: 1 }),
    profile: values.profile === true,
    kv: kvPolicyFromFlags(values),
    kvGlobalFraction: numberFlag(values, "kv-global", undefined, { min: 0, max: 1 }),
    int8Prefill: values["f32-prefill"] === true ? false : undefined,
    int8Decode: values["f32-decode"] === true ? false : undefined,
    coopPrefill: values["coop-prefill"] === true ? true : undefined,
    onProgress: (m) => console.error(m),
  };
}

/**
 * Loads the model named by `-m` (or its already read `header`) with progress on stderr, with `options`
 * (default: those the flags ask for, {@link loadOptionsFromFlags}).
 */
export async function loadFromFlags(
  values: ParsedFlags["values"],
  header?: ModelHeader,
  options: LoadOptions = loadOptionsFromFlags(values),
): Promise<Model> {
  const path = stringFlag(values, "model", true);
  const verbose = values.verbose === true;
  const t0 = performance.now();
  const model = await loadModel(header ?? path, options);
  const ms = performance.now() - t0;
  if (verbose) {
    const h = model.hparams;
    console.error(
      `model: ${h.nLayer} layers, embd ${h.nEmbd}, ff ${h.nFF}, heads ${h.nHead}/${h.nHeadKV}, ` +
        `head_dim ${h.headDim}, vocab ${h.nVocab}, ctx ${model.backend.contextLength}`,
    );
    for (const line of model.backend.describe()) console.error(line);
  }
  console.error(`loaded in ${(ms / 1000).toFixed(2)} s (${model.backend.kind})`);
  return model;
}

/**
 * Generation settings from the sampling flags, checked as the sampler will check them (a value out of
 * range is a one-line error before any model is loaded).
 */
export function generationOptions(values: ParsedFlags["values"]) {
  const options = {
    maxTokens: tokenLimit(values, 128),
    temperature: numberFlag(values, "temp", undefined, { min: 0 }),
    topK: numberFlag(values, "top-k", undefined, { integer: true, min: 0 }),
    topP: numberFlag(values, "top-p", undefined),
    minP: numberFlag(values, "min-p", undefined),
    repeatPenalty: numberFlag(values, "repeat-penalty", undefined),
    repeatLastN: numberFlag(values, "repeat-last-n", undefined, { integer: true, min: 0 }),
    seed: numberFlag(values, "seed", undefined, { integer: true, min: 0, max: MAX_SEED }),
    stop: values.stop as string[] | undefined,
    ignoreEos: values["ignore-eos"] === true,
  };
  if (options.stop?.includes("")) throw new BadFlagError("--stop: the text to stop before is empty");
  new Sampler(options);
  return options;
}

/** `-n`/`--n-predict`: at most this many tokens, or with -1 (as in llama.cpp) until the end or a full context. */
export function tokenLimit(values: ParsedFlags["values"], fallback: number): number {
  const n = numberFlag(values, "n-predict", fallback, { integer: true });
  if (n < -1) throw new BadFlagError(`--n-predict: ${n} is not valid (want a count ≥ 0, or -1 for no limit)`);
  return n === -1 ? Infinity : n;
}

/** One line of speed figures for stderr. */
export function statsLine(s: GenerationStats): string {
  const pre = s.prefillMs > 0 ? (s.promptTokens / s.prefillMs) * 1000 : 0;
  const dec = s.decodeMs > 0 ? ((s.generatedTokens - 1) / s.decodeMs) * 1000 : 0;
  return `prefill: ${s.promptTokens} tokens in ${(s.prefillMs / 1000).toFixed(3)} s (${
    pre.toFixed(1)
  } tok/s); ` +
    `decode: ${s.generatedTokens} tokens, ${dec.toFixed(1)} tok/s; stop: ${s.stopReason}`;
}

/** Prints the per-kernel GPU time table (layers folded together) on stderr, when profiling. */
export function printProfile(model: Model): void {
  if (!model.profiler) return;
  if (!model.profiler.available) {
    console.error(`profile: ${model.profiler.reason}`);
    return;
  }
  console.error(formatProfile(foldLayers(model.profiler.totals())));
}

/** Writes text to stdout without buffering surprises. */
export async function writeOut(text: string): Promise<void> {
  const bytes = new TextEncoder().encode(text);
  let off = 0;
  while (off < bytes.length) off += await Deno.stdout.write(bytes.subarray(off));
}

/**
 * The prompt's tokens and the context to allocate, from the model's header before any weight loads (see
 * {@link contextForPrompt}): a prompt that cannot fit fails at once, and without `-c` the context grows
 * past its default to hold the prompt and `-n` tokens (said on stderr).
 */
function planPrompt(
  values: ParsedFlags["values"],
  header: ModelHeader,
  prompt: string,
  maxTokens: number,
): { ids: number[]; contextLength: number } {
  const trained = header.hparams.contextLength;
  const ids = header.tokenizer.encode(prompt, { addBos: header.tokenizer.addBos });
  const asked = numberFlag(values, "ctx", undefined, { integer: true, min: 1 });
  const contextLength = contextForPrompt(trained, ids.length, maxTokens, asked);
  if (asked === undefined && contextLength > Math.min(trained, DEFAULT_GPU_CONTEXT)) {
    console.error(`context: ${contextLength} tokens, to hold the prompt's ${ids.length} and -n (-c sets it)`);
  }
  return { ids, contextLength };
}

async function readPrompt(values: ParsedFlags["values"]): Promise<string> {
  const p = stringFlag(values, "prompt");
  const f = stringFlag(values, "file");
  if (p !== undefined && f !== undefined) {
    throw new BadFlagError("give either -p/--prompt or -f/--file, not both");
  }
  if (f === undefined) return p ?? "";
  try {
    if (f === "-") return await new Response(Deno.stdin.readable).text();
    return await Deno.readTextFile(f);
  } catch (e) {
    throw new BadFileError(`${f}: cannot read the prompt file (${firstLine(e)})`);
  }
}

/** The `run` subcommand. */
export const runCommand: Command = {
  summary: "generate text from a prompt",
  async main(args) {
    const { values, positionals } = parseFlags("run", args, FLAGS);
    if (values.help) {
      console.log(helpText("wgkv run -m MODEL -p PROMPT [-n N] [flags]", runCommand.summary, FLAGS));
      return 0;
    }
    if (positionals.length > 0) throw new BadFlagError(`run: unexpected argument "${positionals[0]}"`);
    const prompt = await readPrompt(values);
    const options = generationOptions(values);
    const loadOptions = loadOptionsFromFlags(values); // flag mistakes before the model is read
    const header = await readModelHeader(stringFlag(values, "model", true));
    let plan;
    try {
      plan = planPrompt(values, header, prompt, options.maxTokens);
    } catch (e) {
      header.file.close();
      throw e;
    }
    const model = await loadFromFlags(values, header, { ...loadOptions, contextLength: plan.contextLength });
    const interrupt = new Interrupt();
    try {
      const session = model.session();
      const ids = plan.ids;
      const gen = session.generate(ids, {
        ...options,
        onPrefill: prefillReporter(),
        signal: interrupt.reply(),
      });
      let text = "";
      let r = await gen.next();
      while (!r.done) {
        text += r.value.text;
        if (!values.json) await writeOut(r.value.text);
        r = await gen.next();
      }
      const stats = r.value;
      // Every generated token, from the conversation: the pieces leave out a token that completed a stop
      // string without text before it, and the end-of-text token.
      const generated = session.transcript.slice(stats.promptTokens);
      if (values.json) {
        console.log(JSON.stringify({
          prompt,
          text,
          backend: model.backend.kind,
          prompt_tokens: stats.promptTokens,
          generated_tokens: stats.generatedTokens,
          prefill_ms: stats.prefillMs,
          decode_ms: stats.decodeMs,
          stop_reason: stats.stopReason,
          generated,
          kv: kvJson(model),
        }));
      } else {
        await writeOut("\n");
      }
      console.error(statsLine(stats));
      if (values.stats || values.verbose) printKvStats(model, values.stats === true);
      printProfile(model);
      return stats.stopReason === "abort" ? 130 : 0;
    } finally {
      interrupt.close();
      model.close();
    }
  },
};

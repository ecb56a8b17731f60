/**
 * `wgkv info MODEL` (or `-m MODEL`, as the other commands take it): what a GGUF file holds: architecture,
 * shapes, tensor types, context, vocabulary, chat template, and the KV page pool the WebGPU backend would
 * allocate for a context (`--ctx`).
 *
 * @module
 */

import { BadFlagError } from "../errors.ts";
import { openGGUF } from "../gguf/reader.ts";
import { typeInfo } from "../gguf/types.ts";
import { hparamsFromGGUF, type LlamaHParams } from "../model/hparams.ts";
import { formatBytes } from "../gpu/device.ts";
import { DEFAULT_GPU_CONTEXT } from "../engine/load.ts";
import { kvCacheLayout } from "../model/kv_layout.ts";
import { PAGE_TOKENS, pageBytes } from "../kv/page_pool.ts";
import type { Command } from "./main.ts";
import { type FlagSpec, helpText, numberFlag, parseFlags } from "./flags.ts";

const FLAGS: Record<string, FlagSpec> = {
  model: { type: "string", short: "m", help: "FILE  GGUF model to describe (or give it as the argument)" },
  ctx: {
    type: "string",
    short: "c",
    help: "N  context to size the KV pool for (default: the model's, at most 4096, as the GPU loads it)",
  },
  json: { type: "boolean", help: "print one JSON object" },
  tensors: { type: "boolean", help: "list every tensor" },
  help: { type: "boolean", short: "h", help: "show this help" },
};

/** The KV page pool of one sequence's cache, as the WebGPU backend allocates it. */
export interface KvPoolSize {
  /** The KV policy the pool is sized for. */
  policy: "full";
  /** Context tokens the pool holds for every layer and KV head. */
  contextTokens: number;
  /** Pages in the pool. */
  pages: number;
  /** Tokens of one (layer, KV head) per page. */
  pageTokens: number;
  /** Bytes of one page (f16 keys and values). */
  pageBytes: number;
  /** Bytes of the whole pool. */
  bytes: number;
}

/**
 * The KV page pool that loading a model of shape `h` on the WebGPU backend allocates for `contextTokens`
 * under the default (full) policy, as the loader lays the cache out (`kvCacheLayout`).
 */
export function defaultKvPoolSize(h: LlamaHParams, contextTokens: number): KvPoolSize {
  const { pages } = kvCacheLayout(h, { kind: "full" }, contextTokens, 1);
  const bytesPerPage = pageBytes(h.headDim);
  return {
    policy: "full",
    contextTokens,
    pages,
    pageTokens: PAGE_TOKENS,
    pageBytes: bytesPerPage,
    bytes: pages * bytesPerPage,
  };
}

/** The `info` subcommand. */
export const infoCommand: Command = {
  summary: "describe a GGUF model (architecture, shapes, types, vocabulary, template)",
  async main(args) {
    const { values, positionals } = parseFlags("info", args, FLAGS);
    if (values.help) {
      console.log(
        helpText("wgkv info MODEL | -m MODEL [--ctx N] [--json] [--tensors]", infoCommand.summary, FLAGS),
      );
      return 0;
    }
    const askedContext = numberFlag(values, "ctx", undefined, { integer: true, min: 1 });
    const models = values.model === undefined ? positionals : [values.model as string, ...positionals];
    if (models.length !== 1) {
      throw new BadFlagError("info: give exactly one MODEL file (as the argument or -m)");
    }
    const file = await openGGUF(models[0]);
    try {
      const m = file.metadata;
      const types: Record<string, number> = {};
      let weightBytes = 0;
      for (const t of file.tensors) {
        const name = typeInfo(t.type, t.name).name;
        types[name] = (types[name] ?? 0) + 1;
        weightBytes += t.byteLength;
      }
      const tokens = m["tokenizer.ggml.tokens"];
      const summary: Record<string, unknown> = {
        file: file.path,
        file_bytes: file.fileSize,
        gguf_version: file.version,
        architecture: file.architecture,
        name: m["general.name"],
        tensors: file.tensors.length,
        weight_bytes: weightBytes,
        tensor_types: types,
        tokenizer: m["tokenizer.ggml.model"],
        vocab: Array.isArray(tokens) ? tokens.length : undefined,
        chat_template: typeof m["tokenizer.chat_template"] === "string",
      };
      if (file.architecture === "llama" && file.tensors.length > 0) {
        const h = hparamsFromGGUF(file);
        summary.hparams = h;
        const kvPerToken = 2 * h.nLayer * h.nHeadKV * h.headDim * 2;
        summary.kv_bytes_per_token_f16 = kvPerToken;
        summary.kv_bytes_full_context_f16 = kvPerToken * h.contextLength;
        if (askedContext !== undefined && askedContext > h.contextLength) {
          throw new BadFlagError(
            `--ctx ${askedContext} exceeds the model's trained context of ${h.contextLength}`,
          );
        }
        const pool = defaultKvPoolSize(h, askedContext ?? Math.min(h.contextLength, DEFAULT_GPU_CONTEXT));
        summary.kv_pool = {
          policy: pool.policy,
          context_tokens: pool.contextTokens,
          pages: pool.pages,
          page_tokens: pool.pageTokens,
          page_bytes: pool.pageBytes,
          bytes: pool.bytes,
        };
      } else if (askedContext !== undefined) {
        throw new BadFlagError(`--ctx: ${file.path} is not a Llama model with weights; it has no KV cache`);
      }
      if (values.tensors) {
        summary.tensor_list = file.tensors.map((t) => ({
          name: t.name,
          type: typeInfo(t.type, t.name).name,
          shape: t.shape,
          bytes: t.byteLength,
        }));
      }
      if (values.json) {
        console.log(JSON.stringify(summary, null, 2));
        return 0;
      }
      const lines = [
        `file:          ${file.path} (${formatBytes(file.fileSize)}, GGUF v${file.version})`,
        `architecture:  ${file.architecture}${summary.name ? ` (${summary.name})` : ""}`,
        `tensors:       ${file.tensors.length}, ${formatBytes(weightBytes)}: ` +
        Object.entries(types).map(([k, v]) => `${v} ${k}`).join(", "),
        `tokenizer:     ${summary.tokenizer ?? "none"}, vocab ${summary.vocab ?? "?"}, chat template: ${
          summary.chat_template ? "yes" : "no"
        }`,
      ];
      const h = summary.hparams as ReturnType<typeof hparamsFromGGUF> | undefined;
      if (h) {
        lines.push(
          `shape:         ${h.nLayer} layers, embd ${h.nEmbd}, ff ${h.nFF}, heads ${h.nHead} (kv ${h.nHeadKV}), ` +
            `head_dim ${h.headDim}, vocab ${h.nVocab}, ${h.tiedOutput ? "tied" : "separate"} output`,
          `context:       ${h.contextLength} (rope base ${h.ropeBase}${
            h.ropeScaling ? `, llama3 scaling ×${h.ropeScaling.factor}` : ""
          }), rms eps ${Number(h.rmsEps.toPrecision(4))}`,
          `KV cache:      ${formatBytes(summary.kv_bytes_per_token_f16 as number)} per token in f16, ` +
            `${formatBytes(summary.kv_bytes_full_context_f16 as number)} for the full context`,
        );
        const pool = summary.kv_pool as Record<string, number | string>;
        lines.push(
          `KV pool:       ${pool.pages} pages of ${pool.page_tokens} tokens (${
            formatBytes(pool.page_bytes as number)
          } each), ${formatBytes(pool.bytes as number)} for a context of ${pool.context_tokens} tokens ` +
            `(${pool.policy} cache on the GPU; --ctx sets the context)`,
        );
      }
      if (values.tensors) {
        for (const t of summary.tensor_list as { name: string; type: string; shape: number[] }[]) {
          lines.push(`  ${t.name.padEnd(28)} ${t.type.padEnd(5)} [${t.shape.join(", ")}]`);
        }
      }
      console.log(lines.join("\n"));
      return 0;
    } finally {
      file.close();
    }
  },
};

/**
 * `deno task bench`: prefill and decode speed of synthetic Llama models on this machine's WebGPU device,
 * with the achieved weight bandwidth next to the device's measured copy bandwidth. Prints a table on
 * stdout and writes every result to a JSON file as soon as it is measured (a re-run resumes).
 *
 * usage: deno task bench [--shapes tiny,llama-3.2-1b,llama-3.1-8b] [--types f16,q8_0,q4_k_m]
 *                        (types: any of `wgkv synth`'s, the q4_k_m and q5_k_m mixes included)
 *                        [--prompts 512,4096,32768] [--depths 0,4096,32768] [--decode-tokens 64]
 *                        [--out FILE.json] [--fresh] [--profile]
 *                        [--sampled]   (also decode rows with GPU sampling: temp 0.8, top-k 40, top-p 0.95,
 *                                       min-p 0.05, repeat penalty 1.1)
 *                        [--no-fold-norms]   (decode with a dispatch per RMSNorm: "decode-unfolded" rows)
 *                        [--no-fuse-kv-append]   (decode with a KV append dispatch per layer: "…-unfused-append"
 *                                                 rows, e.g. "decode-unfused-append")
 *                        [--no-fuse-wgkv-append]   (dual caches: prefill and decode with a WG-KV append dispatch
 *                                                   per layer: "…-unfused-wgkv-append" rows, e.g.
 *                                                   "decode-unfused-wgkv-append")
 *                        [--no-chain-gates]   (wgkv policy: decode with two write-gate dispatches per layer, not
 *                                              one layer's flags decided by the next layer's gate:
 *                                              "decode-unchained-gates" rows)
 *                        [--no-gates-after-layers]   (wgkv policy: decode with a write gate per layer before
 *                                                     its attention, not all layers' gates after the last
 *                                                     layer: "decode-layer-gates" rows)
 *                        [--no-fuse-decode-reduce]   (decode attention's splits merged by a reduce dispatch per
 *                                                     layer, not by the partial pass's last workgroups:
 *                                                     "decode-unfused-reduce" rows)
 *                        [--prefill-splits N]  (prefill attention with N key splits per KV head:
 *                                               "prefill-splitsN" rows)
 *                        [--prefill-k-splits N]  (the f32/f16 prefill products into the residual split K
 *                                                 into up to N ranges at short steps, 1: never:
 *                                                 "prefill-ksplitsN" rows)
 *                        [--prefill-k-split-workgroups N]  (steps whose tiles come to fewer than N
 *                                                 workgroups split K, default 256: "prefill-ksplitwgN" rows)
 *                        [--prefill-tiling RxK]  (prefill attention with R score rows and K keys per step, e.g.
 *                                                 64x32: "prefill-tilingRxK" rows)
 *                        [--max-batch N]  (prompt tokens per prefill step, default 2048 for the full cache
 *                                          and 512 for the other policies: "prefill-batchN" rows)
 *                        [--direct-keys N]  (decode attention in one dispatch up to N keys, 0: always
 *                                            split: "decode-directN" rows)
 *                        [--decode-splits N]  (decode attention's splits per KV head: "decode-splitsN" rows)
 *                        [--decode-key-lanes N] [--decode-tile-steps N]  (decode attention's key lanes and steps
 *                                               per tile: "decode-lanesN", "decode-stepsN" rows)
 *                        [--decode-direct-key-lanes N]  (the key lanes of its one-dispatch mode for short
 *                                                        rows: "decode-direct-lanesN" rows)
 *                        [--no-decode-uniform-rows]  (full-cache decode attention reads its row lengths
 *                                                     instead of planning from the position:
 *                                                     "decode-row-lengths" rows)
 *                        [--ablate-decode-ops ROLE,…]  (timing only: decode leaves out the layers' ops
 *                                                      of these roles, e.g. attn_output: "decode-skip-…" rows)
 *                        [--repeat-decode-ops ROLE,…]  (timing only: decode runs the layers' ops of these
 *                                                      roles twice in a row: "decode-repeat-…" rows)
 *                        [--repeat-decode-source same-layer|far-layer]  (the second copy: the op again,
 *                                                      its weights then in the L2 cache, or the same role's
 *                                                      op half the model away: "decode-repeat-far-…" rows)
 *                        [--decode-subgroups]  (decode attention's dot products summed and its key lanes
 *                                               merged by subgroup shuffles: "decode-subgroups" rows)
 *                        [--decode-subgroup-reduce]  (the decode products' sums added per subgroup first:
 *                                                     "decode-subgroup-reduce" rows)
 *                        [--ablate-decode-attention launch|tiles|lanes|skip]  (timing only, the logits are
 *                                               wrong: decode attention's workgroups end at once, after their
 *                                               key tiles, after their lanes' merge and partials, or its
 *                                               dispatch is left out: "decode-ablate-X" rows)
 *                        [--wait-readback]  (results come back when mapAsync's promise resolves, about
 *                                            10 ms after the mapping: "…-wait-readback" rows)
 *                        [--f32-decode]  (decode products in f32 instead of the default 8-bit integer dot
 *                                         products: "decode-f32" rows)
 *                        [--decode-int8-chain]  (products write the next one's shared int8 input,
 *                                               GpuModelOptions.decodeInt8Chain: "decode-int8-chain" rows)
 *                        [--f32-prefill]  (prefill products in f32 instead of the default 8-bit integer
 *                                          dot products of quantised weights: "prefill-f32" rows)
 *                        [--coop-prefill]  (every prefill product on the GPU's cooperative matrices, where
 *                                           it has working ones: "prefill-coop" rows)
 *                        [--prefill-subgroups]  (prefill attention's rows' maxima by subgroup shuffles:
 *                                                "prefill-subgroups" rows)
 *                        [--prefill-staging f32|f16]  (prefill attention stages queries and probabilities
 *                                                     as f32 or f16, default f16 above head_dim 64:
 *                                                     "prefill-f32-staging", "prefill-half-staging" rows)
 *                        [--matvec-tuning '{"ffn_down": {"rowsPerWorkgroup": 4}}']  (decode matvec tunings by
 *                                               role, GpuModelOptions.matvecTuning: "decode-tuned" rows)
 *        deno task bench --kv full,random,wgkv [--kv-prompts 8192,32768] [--window 256] [--admit 0.2]
 *                        [--threshold 0.5]   (KV policy rows: prefill, decode at that depth, KV memory;
 *                                             with --profile, per-kernel prefill and decode profiles)
 *                        [--admit-target 0.2]  (wgkv: the threshold that admits this share of a calibration
 *                                               prompt's keys, instead of --threshold)
 *                        [--kv-global 1]  (wgkv: share of a full cache reserved for admitted tokens; the
 *                                          default 1 never runs out, `run` defaults to 0.5)
 *                        [--global-page-run 32]  (dual caches: most global pages a row takes at once, so
 *                                                 that its pages lie consecutive; 1: a page at a time:
 *                                                 "…-page-runN" rows)
 *
 * On a software adapter (lavapipe) the defaults shrink to the tiny shape: the figures then only show
 * that the pipeline runs, and ratios between rows are what to read.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { benchFlags, flagError } from "./flags.ts";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { openGGUF } from "../src/gguf/reader.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import type { DecodeRepeatSource, GpuModelOptions } from "../src/model/gpu_model_options.ts";
import {
  SYNTH_SHAPES,
  SYNTH_TYPES,
  type SynthShape,
  type SynthType,
  writeSyntheticModel,
} from "../src/model/synth.ts";
import { cacheDir } from "../src/cli/demo.ts";
import { TOKEN_EMBD } from "../src/model/tensor_names.ts";
import { formatBytes } from "../src/gpu/device.ts";
import { initGate } from "../src/gate/init.ts";
import type { GateWeights } from "../src/gate/format.ts";
import type { KvPolicy } from "../src/kv/wgkv_policy.ts";
import { createCopy } from "../src/gpu/ops/copy.ts";
import { defaultReadbackMode } from "../src/gpu/readback.ts";
import { foldLayers, formatProfile, GpuProfiler, type ProfileRow } from "../src/gpu/profiler.ts";

/** One measured row. */
interface BenchRow {
  shape: string;
  type: string;
  test: string; // "prefill" | "decode" | "decode-sampled"
  tokens: number; // prompt length (prefill) or depth (decode)
  tokPerS: number;
  ms: number;
  weightGBs?: number; // decode: weight bytes per token / time per token
  device: string;
  policy?: string; // KV policy rows (--kv): full, wgkv, random
  kvUsedBytes?: number;
  kvFullBytes?: number;
  admitted?: number; // mean admitted share over layers and heads
  admittedMin?: number; // least admitted share of a (layer, head)
  admittedMax?: number; // largest admitted share of a (layer, head)
  threshold?: number; // wgkv: the gate threshold τ
  runs?: number; // timed runs; tokPerS and ms are their median
  hostMsPerToken?: number; // decode: CPU time encoding and submitting a step (median run)
  dispatches?: number; // decode: dispatches a greedy step records at that depth
}

/**
 * Times `run` (returning its milliseconds) several times while they add up to less than `budgetMs`, at
 * most `maxRuns` (at least once), and returns the median and the count: single short runs vary with the
 * GPU's clocks.
 */
async function medianRun<T extends { ms: number }>(
  run: () => Promise<T>,
  budgetMs = 1000,
  maxRuns = 7,
): Promise<T & { runs: number }> {
  const results: T[] = [];
  let total = 0;
  do {
    const r = await run();
    results.push(r);
    total += r.ms;
  } while (total < budgetMs && results.length < maxRuns);
  results.sort((a, b) => a.ms - b.ms);
  return { ...results[Math.floor((results.length - 1) / 2)], runs: results.length };
}

const { values } = benchFlags(import.meta.url, () =>
  parseArgs({
    args: Deno.args,
    options: {
      help: { type: "boolean" },
      shapes: { type: "string" },
      types: { type: "string" },
      prompts: { type: "string" },
      depths: { type: "string" },
      "decode-tokens": { type: "string" },
      out: { type: "string" },
      fresh: { type: "boolean" },
      profile: { type: "boolean" },
      sampled: { type: "boolean" },
      "no-fold-norms": { type: "boolean" },
      "no-fuse-kv-append": { type: "boolean" },
      "no-fuse-wgkv-append": { type: "boolean" },
      "no-chain-gates": { type: "boolean" },
      "no-gates-after-layers": { type: "boolean" },
      "wait-readback": { type: "boolean" },
      "no-fuse-decode-reduce": { type: "boolean" },
      "prefill-splits": { type: "string" },
      "prefill-k-splits": { type: "string" },
      "prefill-k-split-workgroups": { type: "string" },
      "prefill-tiling": { type: "string" },
      "prefill-subgroups": { type: "boolean" },
      "prefill-staging": { type: "string" },
      "direct-keys": { type: "string" },
      "decode-splits": { type: "string" },
      "decode-key-lanes": { type: "string" },
      "decode-direct-key-lanes": { type: "string" },
      "no-decode-uniform-rows": { type: "boolean" },
      "decode-tile-steps": { type: "string" },
      "decode-subgroups": { type: "boolean" },
      "decode-subgroup-reduce": { type: "boolean" },
      "ablate-decode-attention": { type: "string" },
      "ablate-decode-ops": { type: "string" },
      "repeat-decode-ops": { type: "string" },
      "repeat-decode-source": { type: "string" },
      "max-batch": { type: "string" },
      "matvec-tuning": { type: "string" },
      "f32-prefill": { type: "boolean" },
      "coop-prefill": { type: "boolean" },
      "f32-decode": { type: "boolean" },
      "decode-int8-chain": { type: "boolean" },
      kv: { type: "string" },
      "kv-prompts": { type: "string" },
      window: { type: "string" },
      admit: { type: "string" },
      threshold: { type: "string" },
      "admit-target": { type: "string" },
      "kv-global": { type: "string" },
      "global-page-run": { type: "string" },
    },
  }));

const gpu = await getGpu({ profile: true, coopMatrix: values["coop-prefill"] === true });
const slow = gpu.isFallback;
const list = (s: string | undefined, fallback: string) =>
  (s ?? fallback).split(",").map((x) => x.trim()).filter(Boolean);
const shapes = list(values.shapes, slow ? "tiny" : "llama-3.2-1b,llama-3.1-8b") as SynthShape[];
const types = list(values.types, slow ? "f16,q8_0,q4_k_m" : "f16,q8_0,q4_k_m") as SynthType[];
const prompts = list(values.prompts, slow ? "64" : "512,4096,32768").map(Number);
const depths = list(values.depths, slow ? "0,128" : "0,4096,32768").map(Number);
const decodeTokens = Math.min(64, Number(values["decode-tokens"] ?? (slow ? 8 : 64)));
for (const s of shapes) if (!SYNTH_SHAPES.includes(s)) flagError(`--shapes: unknown shape ${s}`);
for (const t of types) {
  if (!SYNTH_TYPES.includes(t)) flagError(`--types: unknown type ${t} (known: ${SYNTH_TYPES.join(",")})`);
}
const outPath = values.out ?? "out/bench.json";
await Deno.mkdir(outPath.substring(0, outPath.lastIndexOf("/")) || ".", { recursive: true });

// Results so far (resume), keyed by device + row identity.
const results: {
  device: string;
  copyGBs?: number;
  /** How the device's matrix units (cooperative matrices) are used, or why not (`Gpu.coopMatrixNote`). */
  matrixUnits?: string;
  /** The device's subgroup sizes where WGSL subgroups are on (`Gpu.subgroups`), else null. */
  subgroups?: { minSize: number; maxSize: number } | null;
  rows: BenchRow[];
  profiles?: Record<string, (ProfileRow & { msPerToken: number })[]>;
  matvecTuning?: GpuModelOptions["matvecTuning"];
} = !values.fresh && existsSync(outPath)
  ? JSON.parse(await Deno.readTextFile(outPath))
  : { device: gpu.description, rows: [] };
if (results.device !== gpu.description) results.rows = [];
results.device = gpu.description;
// --no-fold-norms: decode with a dispatch per RMSNorm (rows named "decode-unfolded"), for comparison.
const foldNorms = !values["no-fold-norms"];
// --no-fuse-kv-append: decode with the KV append as a dispatch of its own per layer, not stored by the fused
// QKV (rows named "decode-unfused-append", or "decode-unfolded-unfused-append" with --no-fold-norms).
const fuseKvAppend = !values["no-fuse-kv-append"];
// --no-fuse-wgkv-append: with a dual cache, the WG-KV append as a dispatch of its own per layer, not stored
// by the write gate (wgkv prefill) or the fused QKV (decode) (both rows named "…-unfused-wgkv-append", for
// every policy so that the "vs full" column still finds its full-cache row).
const fuseWgkvAppend = !values["no-fuse-wgkv-append"];
// --global-page-run N: dual caches take a row's global pages N at a time at most (rows named "…-page-runN",
// for every policy, as above).
const globalPageRun = values["global-page-run"] === undefined ? undefined : Number(values["global-page-run"]);
if (globalPageRun !== undefined && !(Number.isInteger(globalPageRun) && globalPageRun >= 1)) {
  flagError(`--global-page-run must be a whole number ≥ 1, got ${values["global-page-run"]}`);
}
const wgkvAppendSuffix = (fuseWgkvAppend ? "" : "-unfused-wgkv-append") +
  (globalPageRun !== undefined ? `-page-run${globalPageRun}` : "");
// --wait-readback: results (tokens, logits, gate flags) are read when mapAsync's promise resolves, not as
// soon as the staging buffer is mapped (rows named "…-wait-readback"; see src/gpu/readback.ts).
const readback = values["wait-readback"] === true ? "wait" : defaultReadbackMode();
const readbackSuffix = readback === "wait" ? "-wait-readback" : "";
// --matvec-tuning JSON: decode matvec tunings by role (rows named "decode-tuned", the tuning kept in the JSON).
let matvecTuning: GpuModelOptions["matvecTuning"];
try {
  matvecTuning = values["matvec-tuning"] === undefined ? undefined : JSON.parse(values["matvec-tuning"]);
} catch (e) {
  flagError(`--matvec-tuning is not JSON: ${(e as Error).message}`);
}
// --direct-keys N: decode attention as one dispatch up to N keys (rows named "decode-directN").
const directKeys = values["direct-keys"] === undefined ? undefined : Number(values["direct-keys"]);
if (directKeys !== undefined && (!Number.isInteger(directKeys) || directKeys < 0)) {
  flagError(`--direct-keys must be a non-negative integer, got ${values["direct-keys"]}`);
}
// --decode-splits N: decode attention's splits per KV head (rows named "decode-splitsN").
const decodeSplits = values["decode-splits"] === undefined ? undefined : Number(values["decode-splits"]);
if (decodeSplits !== undefined && (!Number.isInteger(decodeSplits) || decodeSplits < 1)) {
  flagError(`--decode-splits must be a positive integer, got ${values["decode-splits"]}`);
}
// --decode-key-lanes N, --decode-tile-steps N: decode attention's key lanes and steps per tile (rows named
// "decode-lanesN", "decode-stepsN").
const positiveFlag = (name: string): number | undefined => {
  const v = values[name as keyof typeof values];
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) flagError(`--${name} must be a positive integer, got ${v}`);
  return n;
};
const decodeKeyLanes = positiveFlag("decode-key-lanes");
// --decode-direct-key-lanes N: the direct mode's key lanes (rows named "decode-direct-lanesN").
const decodeDirectKeyLanes = positiveFlag("decode-direct-key-lanes");
// --no-decode-uniform-rows: full-cache decode attention reads its row lengths instead of planning its slots
// from the position, the default (rows named "decode-row-lengths").
const decodeUniformRows = values["no-decode-uniform-rows"] ? false : undefined;
const decodeTileSteps = positiveFlag("decode-tile-steps");
// --decode-subgroups: decode attention's subgroup operations (rows named "decode-subgroups").
const decodeSubgroups = values["decode-subgroups"] ? true : undefined;
// --decode-subgroup-reduce: the decode products' sums added per subgroup first (rows named
// "decode-subgroup-reduce").
const decodeSubgroupReduce = values["decode-subgroup-reduce"] ? true : undefined;
// --ablate-decode-attention X: timing only (rows named "decode-ablate-X", their logits wrong).
const ablation = values["ablate-decode-attention"] as GpuModelOptions["decodeAttentionAblation"];
if (ablation !== undefined && !["launch", "tiles", "lanes", "skip"].includes(ablation)) {
  flagError(`--ablate-decode-attention must be launch, tiles, lanes or skip, got ${ablation}`);
}
// --ablate-decode-ops ROLE,…: timing only (rows named "decode-skip-ROLE+…", their logits wrong).
const skipOps = values["ablate-decode-ops"]?.split(",").filter((r) => r !== "");
const knownRoles = [
  "attn_qkv",
  "attention",
  "attn_output",
  "ffn_gate_up",
  "ffn_down",
  "write_gate",
  "write_gates",
  "kv_append",
];
for (const role of skipOps ?? []) {
  if (!knownRoles.includes(role)) {
    flagError(`--ablate-decode-ops: unknown role ${role} (${knownRoles.join(", ")})`);
  }
}
// --repeat-decode-ops ROLE,…: timing only (rows named "decode-repeat-ROLE+…", their logits wrong where a
// repeated op adds into the residual stream).
const repeatOps = values["repeat-decode-ops"]?.split(",").filter((r) => r !== "");
for (const role of repeatOps ?? []) {
  if (!knownRoles.includes(role)) {
    flagError(`--repeat-decode-ops: unknown role ${role} (${knownRoles.join(", ")})`);
  }
}
// --repeat-decode-source same-layer|far-layer: what the second copy of a repeated op is.
const repeatSource = values["repeat-decode-source"] as DecodeRepeatSource | undefined;
if (repeatSource !== undefined && !["same-layer", "far-layer"].includes(repeatSource)) {
  flagError(`--repeat-decode-source must be same-layer or far-layer, got ${repeatSource}`);
}
if (repeatSource !== undefined && !repeatOps?.length) {
  flagError("--repeat-decode-source needs --repeat-decode-ops");
}
// --no-chain-gates: with the wgkv policy, decode with each layer's write gate in two dispatches (rows named
// "decode-unchained-gates", for every policy, as above).
const chainWriteGates = !values["no-chain-gates"];
// --no-gates-after-layers: with the wgkv policy, decode with a write gate per layer before its attention
// instead of all layers' gates after the last layer (rows named "decode-layer-gates").
const gatesAfterLayers = !values["no-gates-after-layers"];
// --no-fuse-decode-reduce: decode attention's split path with its reduce dispatch (rows named
// "decode-unfused-reduce").
const fusedDecodeReduce = !values["no-fuse-decode-reduce"];
// The decode attention flags as model options (the same for the shape rows and the KV policy rows).
const decodeAttention: Partial<GpuModelOptions> = {
  decodeDirectKeys: directKeys,
  fusedDecodeReduce,
  decodeSplits,
  decodeKeyLanes,
  decodeDirectKeyLanes,
  decodeUniformRows,
  decodeTileSteps,
  decodeSubgroups,
  decodeSubgroupReduce,
  decodeAttentionAblation: ablation,
  decodeSkipOps: skipOps,
  decodeRepeatOps: repeatOps,
  decodeRepeatSource: repeatSource,
};
// --max-batch N: prompt tokens per prefill step (default: the model's, `defaultPrefillBatch`; rows named
// "prefill-batchN" and, as a WG-KV ring holds a step's tokens besides the window, "decode-batchN" when
// given).
const maxBatch = values["max-batch"] === undefined ? undefined : Number(values["max-batch"]);
if (maxBatch !== undefined && (!Number.isInteger(maxBatch) || maxBatch < 1)) {
  console.error(`bench: --max-batch must be a positive integer, got ${values["max-batch"]}`);
  Deno.exit(2);
}
const decodeTest = (foldNorms ? "decode" : "decode-unfolded") + (fuseKvAppend ? "" : "-unfused-append") +
  wgkvAppendSuffix + (chainWriteGates ? "" : "-unchained-gates") + (gatesAfterLayers ? "" : "-layer-gates") +
  (fusedDecodeReduce ? "" : "-unfused-reduce") +
  (matvecTuning ? "-tuned" : "") +
  (directKeys !== undefined ? `-direct${directKeys}` : "") + (values["f32-decode"] === true ? "-f32" : "") +
  (values["decode-int8-chain"] === true ? "-int8-chain" : "") +
  (decodeSplits !== undefined ? `-splits${decodeSplits}` : "") +
  (decodeKeyLanes !== undefined ? `-lanes${decodeKeyLanes}` : "") +
  (decodeDirectKeyLanes !== undefined ? `-direct-lanes${decodeDirectKeyLanes}` : "") +
  (decodeUniformRows === false ? "-row-lengths" : "") +
  (decodeTileSteps !== undefined ? `-steps${decodeTileSteps}` : "") +
  (decodeSubgroups ? "-subgroups" : "") +
  (decodeSubgroupReduce ? "-subgroup-reduce" : "") +
  (ablation ? `-ablate-${ablation}` : "") +
  (skipOps?.length ? `-skip-${skipOps.join("+")}` : "") +
  (repeatOps?.length ? `-repeat-${repeatSource === "far-layer" ? "far-" : ""}${repeatOps.join("+")}` : "") +
  (maxBatch !== undefined ? `-batch${maxBatch}` : "") + readbackSuffix;
// --prefill-splits N: prefill attention with N key splits per KV head (rows named "prefill-splitsN").
// (without it, the model's default for the policy).
const prefillSplits = values["prefill-splits"] === undefined ? undefined : Number(values["prefill-splits"]);
if (
  prefillSplits !== undefined && (!Number.isInteger(prefillSplits) || prefillSplits < 1 || prefillSplits > 64)
) {
  console.error(`bench: --prefill-splits must be an integer from 1 to 64, got ${values["prefill-splits"]}`);
  Deno.exit(2);
}
// --prefill-k-splits N: most K splits of the prefill products into the residual (rows "prefill-ksplitsN").
const prefillKSplits = positiveFlag("prefill-k-splits");
if (prefillKSplits !== undefined && (prefillKSplits & (prefillKSplits - 1)) !== 0) {
  flagError(`--prefill-k-splits must be a power of two, got ${prefillKSplits}`);
}
// --prefill-k-split-workgroups N: the workgroups a split step aims for (rows "prefill-ksplitwgN").
const prefillKSplitWorkgroups = positiveFlag("prefill-k-split-workgroups");
// --prefill-tiling RxK: prefill attention tiling (rows named "prefill-tilingRxK"; the kernel checks it).
let prefillTiling: { rows: number; keys: number } | undefined;
if (values["prefill-tiling"] !== undefined) {
  const m = values["prefill-tiling"].match(/^(\d+)x(\d+)$/);
  if (!m) flagError(`--prefill-tiling must be ROWSxKEYS, e.g. 64x32, got ${values["prefill-tiling"]}`);
  prefillTiling = { rows: Number(m[1]), keys: Number(m[2]) };
}
// --f32-prefill: prefill products in f32 instead of the default integer dot products (rows "prefill-f32").
const f32Prefill = values["f32-prefill"] === true;
const int8Prefill = f32Prefill ? false : undefined;
// --coop-prefill: every prefill product on cooperative matrices (rows "prefill-coop").
const coopPrefill = values["coop-prefill"] === true;
if (coopPrefill && !gpu.coopMatrix) {
  flagError(`--coop-prefill: this GPU has no working cooperative matrices (${gpu.coopMatrixNote})`);
}
// --prefill-subgroups: prefill attention's rows' maxima by subgroup shuffles (rows "prefill-subgroups").
const prefillSubgroups = values["prefill-subgroups"] === true ? true : undefined;
// --prefill-staging f32|f16: prefill attention's queries and probabilities staged as f32 or f16 (rows
// "prefill-f32-staging", "prefill-half-staging"; the model's default otherwise).
const staging = values["prefill-staging"];
if (staging !== undefined && staging !== "f32" && staging !== "f16") {
  flagError(`--prefill-staging must be f32 or f16, got ${staging}`);
}
const prefillHalfStaging = staging === undefined ? undefined : staging === "f16";
// --f32-decode: decode products in f32 instead of the default integer dot products (rows "decode-f32").
const f32Decode = values["f32-decode"] === true;
const int8Decode = f32Decode ? false : undefined;
// --decode-int8-chain: products write the next one's shared int8 input (rows "decode-int8-chain").
const decodeInt8Chain = values["decode-int8-chain"] === true ? true : undefined;
const prefillTest = "prefill" + (prefillSplits !== undefined ? `-splits${prefillSplits}` : "") +
  (prefillKSplits !== undefined ? `-ksplits${prefillKSplits}` : "") +
  (prefillKSplitWorkgroups !== undefined ? `-ksplitwg${prefillKSplitWorkgroups}` : "") +
  (prefillTiling ? `-tiling${prefillTiling.rows}x${prefillTiling.keys}` : "") +
  (maxBatch !== undefined ? `-batch${maxBatch}` : "") + (f32Prefill ? "-f32" : "") +
  (coopPrefill ? "-coop" : "") + (prefillSubgroups ? "-subgroups" : "") +
  (prefillHalfStaging === undefined ? "" : prefillHalfStaging ? "-half-staging" : "-f32-staging") +
  wgkvAppendSuffix + readbackSuffix;
const key = (r: Pick<BenchRow, "shape" | "type" | "test" | "tokens" | "policy">) =>
  `${r.shape}/${r.type}/${r.test}/${r.tokens}${r.policy ? `/${r.policy}` : ""}`;
const kvPolicies = values.kv ? list(values.kv, "") : [];
const kvPrompts = list(values["kv-prompts"], slow ? "96,160" : "8192,32768").map(Number);
const kvWindow = Number(values.window ?? (slow ? 32 : 256));
const kvAdmit = Number(values.admit ?? 0.2);
const kvThreshold = Number(values.threshold ?? 0.5);
const admitTarget = values["admit-target"] === undefined ? undefined : Number(values["admit-target"]);
// --kv-global F: share of a full cache reserved for admitted tokens under wgkv (default 1: never runs out).
const kvGlobal = Number(values["kv-global"] ?? 1);
if (!(kvGlobal > 0 && kvGlobal <= 1)) flagError(`--kv-global must be in (0, 1], got ${values["kv-global"]}`);
const done = new Set(results.rows.map(key));

async function save(): Promise<void> {
  const tmp = `${outPath}.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify(results, null, 2) + "\n");
  await Deno.rename(tmp, outPath);
}

/**
 * Copy bandwidth (read + write bytes per second) of a large buffer-to-buffer kernel copy, timed after a
 * third of a second of copies (a GPU idle while the benchmark started may still be at low clocks): the
 * difference of a long and a short run, so that the fixed wait for the queue cancels (Deno's
 * onSubmittedWorkDone resolves about 10 ms after the work is done, which made an H100 read 1.6 TB/s when
 * the whole run was timed).
 */
async function copyBandwidth(gpu: Gpu): Promise<number> {
  const bytes = Math.min(slow ? 32 << 20 : 1 << 30, gpu.limits.maxStorageBufferBindingSize);
  const n = Math.floor(bytes / 16);
  const src = gpu.buffer("copy.src", n * 16);
  const dst = gpu.buffer("copy.dst", n * 16);
  const copy = createCopy(gpu, "copy", src, dst, n * 4);
  const run = async (iters: number) => {
    const enc = gpu.device.createCommandEncoder();
    for (let i = 0; i < iters; i++) {
      const pass = enc.beginComputePass();
      copy.encode(pass);
      pass.end();
    }
    const t0 = performance.now();
    gpu.device.queue.submit([enc.finish()]);
    await gpu.device.queue.onSubmittedWorkDone();
    return (performance.now() - t0) / 1000;
  };
  await run(2);
  for (const t0 = performance.now(); !slow && performance.now() - t0 < 300;) await run(10);
  const [short, long] = slow ? [1, 4] : [10, 40];
  // The median of three differences; a noisy pair that leaves the long run no slower counts the long run whole.
  const rates: number[] = [];
  for (let i = 0; i < 3; i++) {
    const a = await run(short), b = await run(long);
    rates.push(b > a ? (2 * n * 16 * (long - short)) / (b - a) : (2 * n * 16 * long) / b);
  }
  src.destroy();
  dst.destroy();
  return rates.sort((x, y) => x - y)[1];
}

/**
 * The threshold at which the untrained gate admits about `target` of the keys: the (1 − target) quantile of
 * its scores over the last 512 tokens of a 1024-token random prompt, over every layer and KV head.
 */
async function calibrateThreshold(
  gpu: Gpu,
  file: Awaited<ReturnType<typeof openGGUF>>,
  hp: ReturnType<typeof hparamsFromGGUF>,
  gate: GateWeights,
  target: number,
): Promise<number> {
  if (!(target > 0 && target < 1)) flagError(`--admit-target must be in (0, 1), got ${target}`);
  const model = await GpuModel.load(gpu, file, hp, {
    contextLength: Math.min(1100, hp.contextLength),
    maxBatch: 512,
    policy: { kind: "wgkv", window: kvWindow, threshold: 0.5, gate },
    globalFraction: 1,
  });
  const tokens = Math.min(1024, hp.contextLength - 2);
  await model.forward(randomTokens(tokens, hp.nVocab), 0, "argmax");
  const scores = (await model.gateScores(Math.min(512, tokens))).sort();
  model.destroy();
  const threshold = scores[Math.min(scores.length - 1, Math.floor((1 - target) * scores.length))];
  console.error(
    `wgkv: threshold ${threshold.toPrecision(6)} admits ~${(100 * target).toFixed(0)}% of the keys`,
  );
  return threshold;
}

function randomTokens(n: number, vocab: number): number[] {
  return Array.from({ length: n }, () => 3 + Math.floor(Math.random() * (vocab - 3)));
}

results.copyGBs ??= (await copyBandwidth(gpu)) / 1e9;
results.matrixUnits = gpu.coopMatrixNote;
results.subgroups = gpu.subgroups ?? null;
await save();
console.error(`device: ${gpu.description}; copy bandwidth ${results.copyGBs.toFixed(1)} GB/s`);
console.error(`matrix units: ${gpu.coopMatrixNote}`);
console.error(
  `subgroups: ${gpu.subgroups ? `${gpu.subgroups.minSize}-${gpu.subgroups.maxSize} invocations` : "none"}`,
);

for (const shape of kvPolicies.length > 0 ? [] : shapes) {
  for (const type of types) {
    const wanted = [
      ...prompts.map((tokens) => ({ shape, type, test: prefillTest, tokens })),
      ...depths.map((tokens) => ({ shape, type, test: decodeTest, tokens })),
      ...(values.sampled
        ? depths.map((tokens) => ({ shape, type, test: `${decodeTest}-sampled`, tokens }))
        : []),
    ].filter((r) => !done.has(key(r)));
    if (wanted.length === 0) continue;
    // A separate output matrix for every shape, like the GGUFs llama.cpp's published figures used.
    const path = join(cacheDir(), `synthetic-${shape}-${type}-untied-seed1.gguf`);
    if (!existsSync(path)) {
      await Deno.mkdir(cacheDir(), { recursive: true });
      console.error(`writing ${path}`);
      await writeSyntheticModel({ shape, type, out: path, seed: 1, tiedOutput: false });
    }
    const file = await openGGUF(path);
    const hp = hparamsFromGGUF(file);
    // (At least room for the warm-up below: 64 tokens and its decode steps.)
    const ctx = Math.max(...prompts, ...depths, 72) + decodeTokens + 1;
    const model = await GpuModel.load(gpu, file, hp, {
      contextLength: Math.min(ctx, hp.contextLength),
      maxBatch,
      foldNorms,
      fuseKvAppend,
      fuseWgkvAppend,
      prefillSplits,
      prefillKSplits,
      prefillKSplitWorkgroups,
      prefillTiling,
      prefillSubgroups,
      prefillHalfStaging,
      matvecTuning,
      int8Prefill,
      int8Decode,
      decodeInt8Chain,
      coopPrefill,
      ...decodeAttention,
      readback,
      onProgress: (m) => console.error(m),
    });
    if (matvecTuning) results.matvecTuning = matvecTuning;
    // Bytes a decode step reads: every matrix once, one embedding row.
    const embd = file.tensor(TOKEN_EMBD);
    const decodeBytes = file.tensors.reduce((s, t) => s + t.byteLength, 0) - embd.byteLength +
      (hp.tiedOutput ? embd.byteLength : 0) + embd.byteLength / hp.nVocab;
    // Warm-up of both graphs (pipelines, first touches), then half a second of decoding: a GPU idle since
    // the load may still run at low clocks (a small model's first decode row measured 2× slow without it).
    const warm = Math.min(64, ctx - 8);
    const first = await model.forward(randomTokens(warm, hp.nVocab), 0, "argmax");
    for (const t0 = performance.now(); performance.now() - t0 < (slow ? 0 : 500);) {
      await model.decodeGreedy(first, warm, 4);
    }
    await model.decodeGreedy(first, warm, 4);
    for (const r of wanted) {
      let row: BenchRow;
      if (r.test === prefillTest) {
        const toks = randomTokens(r.tokens, hp.nVocab);
        const { ms, runs } = await medianRun(async () => {
          const t0 = performance.now();
          await model.forward(toks, 0, "argmax");
          return { ms: performance.now() - t0 };
        });
        row = { ...r, tokPerS: (r.tokens / ms) * 1000, ms, runs, device: gpu.description };
      } else {
        // Decode at depth d: the first d positions are marked cached without being computed (their
        // contents do not change the work of a step), so deep contexts cost no long prefill here.
        model.reserveContext(r.tokens);
        // Greedy steps chained on the GPU (one readback per chain), as `run --temp 0` decodes.
        const tok = await model.forward([5], r.tokens, "argmax");
        const { ms, runs, hostMs } = await medianRun(async () => {
          const t0 = performance.now();
          if (r.test.endsWith("-sampled")) {
            // llama.cpp's default sampler chain, drawn on the GPU.
            const settings = {
              temperature: 0.8,
              topK: 40,
              topP: 0.95,
              minP: 0.05,
              repeatPenalty: 1.1,
              repeatLastN: 64,
              seed: 1,
            };
            await model.decodeSampled(tok, r.tokens + 1, decodeTokens, {
              settings,
              history: [5, tok],
              draw: 0,
            });
          } else {
            await model.decodeGreedy(tok, r.tokens + 1, decodeTokens);
          }
          return {
            ms: (performance.now() - t0) / decodeTokens,
            hostMs: model.lastChainHostMs / decodeTokens,
          };
        }, 500);
        row = {
          ...r,
          tokPerS: 1000 / ms,
          ms,
          runs,
          hostMsPerToken: hostMs,
          dispatches: model.decodeDispatches(r.tokens + 1),
          weightGBs: decodeBytes / (ms / 1000) / 1e9,
          device: gpu.description,
        };
      }
      results.rows.push(row);
      done.add(key(row));
      await save();
      console.error(
        `${row.shape} ${row.type} ${row.test} ${row.tokens}: ${row.tokPerS.toFixed(1)} tok/s` +
          (row.weightGBs ? ` (${row.weightGBs.toFixed(1)} GB/s of weights)` : "") +
          (row.hostMsPerToken !== undefined
            ? `, host ${(row.hostMsPerToken * 1000).toFixed(0)} µs/token`
            : "") +
          (row.dispatches !== undefined ? `, ${row.dispatches} dispatches/token` : "") +
          ` (median of ${row.runs})`,
      );
    }
    if (values.profile && prompts.length) {
      // Where a prefill's time goes, at the longest prompt measured.
      const tokens = Math.max(...prompts);
      const profiler = new GpuProfiler(gpu);
      model.setProfiler(profiler);
      await model.forward(randomTokens(tokens, hp.nVocab), 0, "argmax");
      model.setProfiler(undefined);
      const rows = foldLayers(profiler.totals());
      results.profiles ??= {};
      results.profiles[`${shape}/${type}/prefill@${tokens}`] = rows.map((r) => ({
        ...r,
        msPerToken: r.totalMs / tokens,
      }));
      await save();
      console.error(`prefill profile, ${shape} ${type} at ${tokens} tokens (ms in all):`);
      console.error(formatProfile(rows));
      profiler.destroy();
    }
    if (values.profile && depths.length) {
      // Where a decode step's time goes, at the deepest depth measured.
      const depth = Math.max(...depths);
      const profiler = new GpuProfiler(gpu);
      model.reserveContext(depth);
      let tok = await model.forward([5], depth, "argmax");
      model.setProfiler(profiler);
      for (let i = 0; i < 4; i++) tok = await model.forward([tok], depth + 1 + i, "argmax");
      model.setProfiler(undefined);
      const rows = foldLayers(profiler.totals()).map((r) => ({ ...r, msPerToken: r.totalMs / 4 }));
      results.profiles ??= {};
      results.profiles[`${shape}/${type}/decode@${depth}`] = rows;
      await save();
      console.error(`decode profile, ${shape} ${type} at depth ${depth} (ms per token):`);
      console.error(
        formatProfile(rows.map((r) => ({ label: r.label, calls: r.calls / 4, totalMs: r.msPerToken }))),
      );
      profiler.destroy();
    }
    model.destroy();
    file.close();
  }
}

/** Untimed decode steps before a KV policy row's timed chain. */
const KV_WARM_STEPS = 4;

// KV policy rows: for each policy and prompt length, a real prefill (timed), then chained greedy decode
// at that depth (timed), and the KV memory in use against a full cache.
for (const shape of kvPolicies.length > 0 ? shapes : []) {
  for (const type of types) {
    const path = join(cacheDir(), `synthetic-${shape}-${type}-untied-seed1.gguf`);
    if (!existsSync(path)) {
      await Deno.mkdir(cacheDir(), { recursive: true });
      console.error(`writing ${path}`);
      await writeSyntheticModel({ shape, type, out: path, seed: 1, tiedOutput: false });
    }
    const file = await openGGUF(path);
    const hp = hparamsFromGGUF(file);
    // A prompt and its decode steps must fit the model's context (checked before any long prefill).
    for (const tokens of kvPrompts) {
      if (tokens + KV_WARM_STEPS + decodeTokens + 6 > hp.contextLength) {
        flagError(
          `--kv-prompts ${tokens}: with ${decodeTokens} decode tokens it exceeds ${shape}'s context of ` +
            `${hp.contextLength} (at most ${hp.contextLength - KV_WARM_STEPS - decodeTokens - 6})`,
        );
      }
    }
    // No trained gate exists for a synthetic model: a freshly initialised one (scores near 0.5) with
    // --threshold picks roughly what share is admitted; the row reports the share actually admitted.
    const gate = kvPolicies.includes("wgkv")
      ? await initGate(file, { seed: 1, window: kvWindow })
      : undefined;
    const threshold = gate && admitTarget !== undefined
      ? await calibrateThreshold(gpu, file, hp, gate, admitTarget)
      : kvThreshold;
    for (const name of kvPolicies) {
      const policy: KvPolicy<GateWeights> = name === "full"
        ? { kind: "full" }
        : name === "random"
        ? { kind: "random", window: kvWindow, rate: kvAdmit, seed: 1 }
        : name === "window"
        ? { kind: "window", window: kvWindow }
        : { kind: "wgkv", window: kvWindow, threshold, gate: gate! };
      for (const tokens of kvPrompts) {
        const rows = [prefillTest, decodeTest].map((test) => ({ shape, type, test, tokens, policy: name }));
        if (rows.every((r) => done.has(key(r)))) continue;
        const model = await GpuModel.load(gpu, file, hp, {
          contextLength: tokens + KV_WARM_STEPS + decodeTokens + 6,
          maxBatch,
          foldNorms,
          fuseKvAppend,
          fuseWgkvAppend,
          chainWriteGates,
          gatesAfterLayers,
          prefillSplits,
          prefillKSplits,
          prefillKSplitWorkgroups,
          prefillTiling,
          prefillSubgroups,
          prefillHalfStaging,
          int8Prefill,
          int8Decode,
          decodeInt8Chain,
          coopPrefill,
          matvecTuning,
          ...decodeAttention,
          readback,
          policy,
          globalFraction: name === "wgkv" ? kvGlobal : undefined,
          globalPageRun,
          onProgress: (m) => console.error(m),
        });
        await model.forward(randomTokens(64, hp.nVocab), 0, "argmax"); // warm-up (pipelines)
        // With --profile the timed prefill also records per-kernel GPU time (timestamp queries).
        const profiler = values.profile ? new GpuProfiler(gpu) : undefined;
        model.setProfiler(profiler);
        const t0 = performance.now();
        const first = await model.forward(randomTokens(tokens, hp.nVocab), 0, "argmax");
        const prefillMs = performance.now() - t0;
        model.setProfiler(undefined);
        if (profiler) {
          const rows = foldLayers(profiler.totals());
          results.profiles ??= {};
          results.profiles[`${shape}/${type}/${name}/prefill@${tokens}`] = rows.map((r) => ({
            ...r,
            msPerToken: r.totalMs / tokens,
          }));
          console.error(`prefill profile, ${shape} ${type} ${name} at ${tokens} tokens (ms in all):`);
          console.error(formatProfile(rows));
          profiler.destroy();
        }
        // A short untimed chain first (the first chain after a prefill paid one-off costs), then the timed
        // one, going on from the first (the dual cache goes back only a few tokens).
        const warm = await model.decodeGreedy(first, tokens, KV_WARM_STEPS);
        const steps = Math.min(decodeTokens, model.maxChain);
        const t1 = performance.now();
        const decoded = await model.decodeGreedy(warm[KV_WARM_STEPS - 1], tokens + KV_WARM_STEPS, steps);
        const decodeMs = (performance.now() - t1) / steps;
        const usage = model.kvStats();
        if (values.profile) {
          // Where a decode step's time goes under this policy: 4 more steps with timestamp queries.
          const profiler = new GpuProfiler(gpu);
          model.setProfiler(profiler);
          await model.decodeGreedy(decoded[steps - 1], tokens + KV_WARM_STEPS + steps, 4);
          model.setProfiler(undefined);
          const rows = foldLayers(profiler.totals()).map((r) => ({ ...r, msPerToken: r.totalMs / 4 }));
          results.profiles ??= {};
          results.profiles[`${shape}/${type}/${name}/decode@${tokens}`] = rows;
          console.error(`decode profile, ${shape} ${type} ${name} at ${tokens} tokens (ms per token):`);
          console.error(
            formatProfile(rows.map((r) => ({ label: r.label, calls: r.calls / 4, totalMs: r.msPerToken }))),
          );
          profiler.destroy();
        }
        const admitted = usage.dual
          ? usage.dual.admittedFraction.reduce((a, b) => a + b, 0) / usage.dual.admittedFraction.length
          : 1;
        const shares = usage.dual?.admittedFraction ?? [1];
        const common = {
          kvUsedBytes: usage.usedBytes,
          kvFullBytes: usage.fullBytes,
          admitted,
          admittedMin: Math.min(...shares),
          admittedMax: Math.max(...shares),
          ...(name === "wgkv" ? { threshold } : {}),
          device: gpu.description,
        };
        results.rows.push(
          { ...rows[0], tokPerS: (tokens / prefillMs) * 1000, ms: prefillMs, ...common },
          { ...rows[1], tokPerS: 1000 / decodeMs, ms: decodeMs, ...common },
        );
        for (const r of rows) done.add(key(r));
        await save();
        console.error(
          `${shape} ${type} ${name} @${tokens}: prefill ${((tokens / prefillMs) * 1000).toFixed(1)} tok/s, ` +
            `decode ${(1000 / decodeMs).toFixed(1)} tok/s, KV ${formatBytes(usage.usedBytes)} of ${
              formatBytes(usage.fullBytes)
            } full, admitted ${(100 * admitted).toFixed(1)}% (per layer and head ${
              (100 * common.admittedMin).toFixed(1)
            }–${(100 * common.admittedMax).toFixed(1)}%)`,
        );
        model.destroy();
      }
    }
    file.close();
  }
}

// The table.
const lines = [`device: ${results.device}; copy bandwidth (read+write) ${results.copyGBs?.toFixed(1)} GB/s`];
const plainRows = results.rows.filter((r) => !r.policy);
if (plainRows.length > 0) {
  lines.push(
    "",
    "| shape | type | test | tokens/depth | tok/s | ms | weight GB/s | % of copy bw |",
    "|---|---|---|---:|---:|---:|---:|---:|",
  );
}
for (const r of plainRows) {
  const pct = r.weightGBs && results.copyGBs ? ((100 * r.weightGBs) / results.copyGBs).toFixed(0) + "%" : "";
  lines.push(
    `| ${r.shape} | ${r.type} | ${r.test} | ${r.tokens} | ${r.tokPerS.toFixed(1)} | ${r.ms.toFixed(2)} | ${
      r.weightGBs === undefined ? "" : r.weightGBs.toPrecision(3)
    } | ${pct} |`,
  );
}
const kvRows = results.rows.filter((r) => r.policy);
if (kvRows.length > 0) {
  lines.push(
    "",
    "| shape | type | policy | test | tokens/depth | tok/s | vs full | KV in use | vs full | admitted |",
    "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
  );
  for (const r of kvRows) {
    const base = kvRows.find((b) =>
      b.policy === "full" && b.shape === r.shape && b.type === r.type && b.test === r.test &&
      b.tokens === r.tokens
    );
    const speed = base ? `${(r.tokPerS / base.tokPerS).toFixed(2)}×` : "";
    const mem = r.kvFullBytes ? `${((100 * (r.kvUsedBytes ?? 0)) / r.kvFullBytes).toFixed(0)}%` : "";
    lines.push(
      `| ${r.shape} | ${r.type} | ${r.policy} | ${r.test} | ${r.tokens} | ${
        r.tokPerS.toFixed(1)
      } | ${speed} | ${formatBytes(r.kvUsedBytes ?? 0)} | ${mem} | ${
        ((r.admitted ?? 1) * 100).toFixed(1)
      }% |`,
    );
  }
}
console.log(lines.join("\n"));
console.error(`results: ${outPath}`);

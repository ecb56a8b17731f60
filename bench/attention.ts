/**
 * `deno task bench:attention`: speed of the attention kernels alone on this machine's WebGPU device, for
 * tuning: the flash-attention prefill (one chunk of queries at a given depth of the cache) per tiling, and
 * the split-K decode (one query at a given depth) per split count ("direct": the one-dispatch mode) and
 * key block. The cache holds zeros (speed does not depend on the values). Prints a table on stdout and
 * writes JSON.
 *
 * usage: deno task bench:attention [--head-dim 128] [--kv-heads 8] [--q-heads 32]
 *          [--prefill 512@0,512@7680,4096@0] [--tilings 64x32,32x32,64x16] [--prefill-splits 1,4,8]
 *          [--staging f32,f16]
 *          [--decode-depths 4096,32768]
 *          [--splits 32,64,128,direct] [--tile-steps 2,4,8] [--rotate 1,0] [--fused-reduce 1,0]
 *          [--append-chunk 512] [--wgkv-rate 0.2]
 *          [--out FILE.json]
 *
 * Prefill figures are attention FLOP/s (4 · head_dim per visible query-key pair); decode figures are the
 * KV bytes read per second. The decode cache is filled in one append (each row's pages contiguous) or,
 * with --append-chunk N, N tokens at a time over all rows (each row's pages in runs of N / 16, as a prefill in
 * steps of N tokens leaves them). `--wgkv-rate R` also times decode over a WG-KV dual cache at each depth:
 * the `random` policy admitting R of the tokens (window 256; the heads' admitted counts vary as with any
 * policy), filled through the model's own append and promotion kernels in its WG-KV prefill steps, so rows are
 * ragged per head and the global pages lie where a prefill leaves them; GB/s counts the K and V bytes of
 * the rows read.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { benchFlags, flagError } from "./flags.ts";
import { getGpu } from "../src/gpu/device.ts";
import {
  createFlashDecode,
  createFlashPrefill,
  type FlashDecodeOptions,
  type PrefillTileShape,
} from "../src/gpu/ops/attention.ts";
import { type GpuOp, StepParams } from "../src/gpu/ops/op.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
import { DualCache } from "../src/kv/dual_cache.ts";
import { createWgkvAppend } from "../src/gpu/ops/wgkv_append.ts";
import { createWgkvPromote } from "../src/gpu/ops/wgkv_promote.ts";
import { gateOutputBytes } from "../src/gpu/ops/write_gate.ts";
import { defaultPrefillBatch } from "../src/model/gpu_model_options.ts";
import { saveJson, timeOps } from "./kernel_timing.ts";

const { values } = benchFlags(import.meta.url, () =>
  parseArgs({
    args: Deno.args,
    options: {
      help: { type: "boolean" },
      "head-dim": { type: "string", default: "128" },
      "kv-heads": { type: "string", default: "8" },
      "q-heads": { type: "string", default: "32" },
      prefill: { type: "string" },
      tilings: { type: "string", default: "default" },
      "prefill-splits": { type: "string", default: "1" },
      staging: { type: "string", default: "f32" },
      "decode-depths": { type: "string" },
      splits: { type: "string", default: "default" },
      "tile-steps": { type: "string", default: "default" },
      rotate: { type: "string", default: "1" },
      "fused-reduce": { type: "string", default: "1" },
      "append-chunk": { type: "string" },
      "wgkv-rate": { type: "string" },
      out: { type: "string" },
    },
  }));

const gpu = await getGpu({ profile: true });
const slow = gpu.isFallback;
const D = Number(values["head-dim"]),
  kvHeads = Number(values["kv-heads"]),
  qHeads = Number(values["q-heads"]);
const list = (s: string | undefined, fallback: string) =>
  (s ?? fallback).split(",").map((x) => x.trim()).filter(Boolean);
const prefillCases = list(values.prefill, slow ? "64@0,64@64" : "512@0,512@7680,512@32256,4096@0")
  .map((c) => c.split("@").map(Number) as [number, number]);
const tilings: (PrefillTileShape | undefined)[] = list(values.tilings, "default").map((t) => {
  if (t === "default") return undefined;
  const [rows, keys] = t.split("x").map(Number);
  return { rows, keys };
});
const prefillSplitsList = list(values["prefill-splits"], "1").map(Number);
const decodeDepths = list(values["decode-depths"], slow ? "256" : "4096,32768,131072").map(Number);
// "direct": the one-dispatch mode of short rows (FlashDecodeOptions.directKeys), whatever the depth.
const splitsList = list(values.splits, "default").map((s) =>
  s === "default" ? undefined : s === "direct" ? "direct" as const : Number(s)
);
const tileStepsList = list(values["tile-steps"], "default").map((
  t,
) => (t === "default" ? undefined : Number(t)));
const rotateList = list(values.rotate, "1").map((r) => r !== "0");
// Split decode: the splits merged by the partial pass's last workgroups (1) or by a reduce dispatch (0).
const fusedReduceList = list(values["fused-reduce"], "1").map((r) => r !== "0");
const wgkvRate = values["wgkv-rate"] === undefined ? undefined : Number(values["wgkv-rate"]);
if (wgkvRate !== undefined && !(wgkvRate > 0 && wgkvRate <= 1)) {
  flagError(`--wgkv-rate must be in (0, 1], got ${values["wgkv-rate"]}`);
}

// --staging f32,f16: prefill attention's staged queries and probabilities (variants named "f16 staging").
const stagings = list(values.staging, "f32");
for (const st of stagings) {
  if (st !== "f32" && st !== "f16") flagError(`--staging takes f32 and f16, got ${st}`);
}

interface Row {
  test: string;
  chunk?: number;
  depth: number;
  variant: string;
  us: number;
  tflops?: number;
  gbs?: number;
}
const rows: Row[] = [];

function print(row: Row): void {
  rows.push(row);
  const figure = row.tflops !== undefined
    ? `${row.tflops.toFixed(2)} TFLOP/s`
    : `${row.gbs!.toFixed(0)} GB/s`;
  const what = row.chunk !== undefined ? `${row.chunk} @ ${row.depth}` : `@ ${row.depth}`;
  console.log(
    `${row.test.padEnd(8)} ${what.padEnd(14)} ${row.variant.padEnd(22)} ${
      row.us.toFixed(1).padStart(10)
    } µs  ${figure}`,
  );
}

console.log(`${gpu.description}: attention kernels, head_dim ${D}, ${qHeads} query / ${kvHeads} KV heads`);

for (const [chunk, depth] of prefillCases) {
  const total = depth + chunk;
  const kv = await KvCache.create(gpu, { layers: 1, kvHeads, headDim: D, maxTokensPerHead: total });
  const slot = kv.openSequence();
  kv.append(slot, total);
  kv.flush();
  kv.selectSequence(slot);
  const step = new StepParams(gpu, chunk);
  step.set(chunk, depth);
  const q = gpu.buffer("q", chunk * qHeads * D * 4);
  const out = gpu.buffer("out", chunk * qHeads * D * 4);
  let pairs = 0;
  for (let i = 0; i < chunk; i++) pairs += depth + i + 1;
  const flops = 4 * D * qHeads * pairs;
  for (const tiling of tilings) {
    for (
      const [splits, staging] of prefillSplitsList.flatMap((n) => stagings.map((st) => [n, st] as const))
    ) {
      let op: GpuOp;
      try {
        op = createFlashPrefill(gpu, {
          label: "prefill",
          kv,
          layer: 0,
          qHeads,
          q,
          out,
          maxTokens: chunk,
          step,
          tiling,
          splits,
          halfStaging: staging === "f16",
        });
      } catch (e) {
        console.log(
          `prefill ${chunk}@${depth} ${JSON.stringify(tiling)} splits ${splits}: ${(e as Error).message}`,
        );
        continue;
      }
      const { us } = await timeOps(gpu, [op], slow);
      const variant = `${tiling ? `${tiling.rows}x${tiling.keys}` : "default"}${
        splits > 1 ? ` splits ${splits}` : ""
      }${staging === "f16" ? " f16 staging" : ""}`;
      print({ test: "prefill", chunk, depth, variant, us, tflops: flops / (us * 1e-6) / 1e12 });
    }
  }
  q.destroy();
  out.destroy();
  kv.destroy();
}

for (const depth of decodeDepths) {
  const perLayer = depth * kvHeads * D * 4;
  const layers = Math.max(1, Math.min(32, Math.ceil(256e6 / perLayer)));
  const kv = await KvCache.create(gpu, { layers, kvHeads, headDim: D, maxTokensPerHead: depth });
  const slot = kv.openSequence();
  const chunk = Number(values["append-chunk"] ?? depth);
  for (let done = 0; done < depth; done += chunk) kv.append(slot, Math.min(chunk, depth - done));
  kv.flush();
  kv.selectSequence(slot);
  const q = gpu.buffer("q", qHeads * D * 4);
  const out = gpu.buffer("out", qHeads * D * 4);
  const step = new StepParams(gpu, 1, "decode step");
  step.set(1, depth - 1);
  for (const splits of splitsList) {
    for (const tileSteps of tileStepsList) {
      for (
        const [rotateTiles, fusedReduce] of rotateList.flatMap((r) => fusedReduceList.map((f) => [r, f]))
      ) {
        if (splits === "direct" && !fusedReduce) continue; // one dispatch anyway
        const variant = `splits ${splits ?? "default"} steps ${tileSteps ?? "default"}${
          rotateTiles ? "" : " unrotated"
        }${fusedReduce ? "" : " reduce pass"}`;
        await timeDecode(depth, variant, perLayer, layers, (layer) => ({
          kv,
          layer,
          q,
          out,
          tileSteps,
          rotateTiles,
          fusedReduce,
          ...(splits === "direct" ? { step, directKeys: depth } : { splits }),
        }));
      }
    }
  }
  q.destroy();
  out.destroy();
  kv.destroy();
  if (wgkvRate !== undefined) await wgkvDecode(depth, wgkvRate);
}

/**
 * Times the decode attention of `layers` layers (one op per layer, cycled through), each built from
 * `options(layer)`, and prints its row: GB/s counts `bytes` per op. A configuration the op refuses prints
 * its reason instead.
 */
async function timeDecode(
  depth: number,
  variant: string,
  bytes: number,
  layers: number,
  options: (layer: number) => Omit<FlashDecodeOptions, "label" | "qHeads">,
): Promise<void> {
  let ops: GpuOp[];
  try {
    ops = Array.from(
      { length: layers },
      (_, layer) => createFlashDecode(gpu, { label: "decode", qHeads, ...options(layer) }),
    );
  } catch (e) {
    console.log(`decode @${depth} ${variant}: ${(e as Error).message}`);
    return;
  }
  const { us } = await timeOps(gpu, ops, slow); // per op: one layer
  print({ test: "decode", depth, variant, us, gbs: bytes / (us * 1e-6) / 1e9 });
}

/** Runs `ops` in one pass and waits for them. */
async function runNow(ops: GpuOp[]): Promise<void> {
  const encoder = gpu.device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  for (const op of ops) op.encode(pass);
  pass.end();
  gpu.device.queue.submit([encoder.finish()]);
  await gpu.device.queue.onSubmittedWorkDone();
}

/**
 * Decode attention over a WG-KV dual cache of `depth` tokens with the random policy admitting `rate` of
 * them (see the usage), per split count and tile steps.
 */
async function wgkvDecode(depth: number, rate: number): Promise<void> {
  const window = 256, maxBatch = defaultPrefillBatch("wgkv", false); // the model's wgkv prefill step (512)
  const perLayer = Math.min(depth, window + rate * depth) * kvHeads * D * 4;
  const layers = Math.max(1, Math.min(32, Math.ceil(256e6 / perLayer)));
  const kv = await DualCache.create(gpu, {
    layers,
    kvHeads,
    headDim: D,
    policy: { kind: "random", window, rate, seed: 1 },
    maxBatch,
    maxGlobalTokens: Math.ceil(depth * rate * 1.25) + 256,
  });
  const step = new StepParams(gpu, maxBatch, "wgkv step");
  const input = gpu.buffer("k and v", maxBatch * kvHeads * D * 4);
  const flags = gpu.buffer("gate flags", gateOutputBytes(maxBatch, layers, kvHeads));
  const fill = [
    createWgkvPromote(gpu, { label: "promote", kv, maxTokens: maxBatch }),
    ...Array.from({ length: layers }, (_, layer) =>
      createWgkvAppend(gpu, {
        label: "append",
        kv,
        layer,
        maxTokens: maxBatch,
        k: input,
        v: input,
        gateFlags: flags,
        step,
      })),
  ];
  const slot = kv.openSequence();
  for (let pos = 0; pos < depth; pos += maxBatch) {
    const m = Math.min(maxBatch, depth - pos);
    kv.beginStep(slot, m, pos);
    step.set(m, pos);
    await runNow(fill);
    kv.endStep(slot);
  }
  // The K and V bytes of the rows one layer reads, on average over the layers.
  let keys = 0;
  for (let l = 0; l < layers; l++) for (let h = 0; h < kvHeads; h++) keys += kv.length(slot, l, h);
  const bytes = keys / layers * D * 4;
  const q = gpu.buffer("q", qHeads * D * 4);
  const out = gpu.buffer("out", qHeads * D * 4);
  const decodeStep = new StepParams(gpu, 1, "decode step");
  decodeStep.set(1, depth - 1);
  for (const splits of splitsList) {
    if (splits === "direct") continue;
    for (const tileSteps of tileStepsList) {
      // The rows' share of the depth: the ring (window and a prefill step) and the admitted tokens.
      const variant = `wgkv ${(keys / layers / kvHeads / depth * 100).toFixed(1)}% splits ${
        splits ?? "default"
      } steps ${tileSteps ?? "default"}`;
      await timeDecode(depth, variant, bytes, layers, (layer) => ({
        kv,
        layer,
        q,
        out,
        tileSteps,
        splits,
        step: decodeStep,
        directKeys: 0,
        wgkv: kv,
      }));
    }
  }
  for (const b of [q, out, input, flags, step.buffer, decodeStep.buffer]) b.destroy();
  kv.destroy();
}

if (values.out) saveJson(values.out, { device: gpu.description, headDim: D, qHeads, kvHeads, rows });

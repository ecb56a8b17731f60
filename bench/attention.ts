/**
 * `deno task bench:attention`: speed of the attention kernels alone on this machine's WebGPU device, for
 * tuning: the flash-attention prefill (one chunk of queries at a given depth of the cache) per tiling, and
 * the split-K decode (one query at a given depth) per split count ("direct": the one-dispatch mode) and
 * key block. The cache holds zeros (speed does not depend on the values). Prints a table on stdout and
 * writes JSON.
 *
 * usage: deno task bench:attention [--head-dim 128] [--kv-heads 8] [--q-heads 32]
 *          [--prefill 512@0,512@7680,4096@0] [--tilings 64x32,32x32,64x16] [--prefill-splits 1,4,8]
 *          [--kv-tiles f16,f32]
 *          [--decode-depths 4096,32768]
 *          [--splits 32,64,128,direct] [--tile-steps 2,4,8] [--rotate 1,0] [--fused-reduce 1,0]
 *          [--append-chunk 512]
 *          [--out FILE.json]
 *
 * Prefill figures are attention FLOP/s (4 · head_dim per visible query-key pair); decode figures are the
 * KV bytes read per second. `--kv-tiles` lists how the prefill stages K and V: the cache's f16 pairs
 * (default) or f32 (`FlashPrefillOptions.f32Tiles`). The decode cache is filled in one append (each row's pages contiguous) or,
 * with --append-chunk N, N tokens at a time over all rows (each row's pages in runs of N / 16, as a prefill in
 * steps of N tokens leaves them).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { benchFlags, flagError } from "./flags.ts";
import { getGpu } from "../src/gpu/device.ts";
import { createFlashDecode, createFlashPrefill, type PrefillTileShape } from "../src/gpu/ops/attention.ts";
import { type GpuOp, StepParams } from "../src/gpu/ops/op.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
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
      "kv-tiles": { type: "string", default: "f16" },
      "decode-depths": { type: "string" },
      splits: { type: "string", default: "default" },
      "tile-steps": { type: "string", default: "default" },
      rotate: { type: "string", default: "1" },
      "fused-reduce": { type: "string", default: "1" },
      "append-chunk": { type: "string" },
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
const kvTilesList = list(values["kv-tiles"], "f16");
for (const t of kvTilesList) {
  if (t !== "f16" && t !== "f32") flagError(`--kv-tiles must list f16 or f32, got ${t}`);
}
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
      const [splits, kvTiles] of prefillSplitsList.flatMap((s) => kvTilesList.map((t) => [s, t] as const))
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
          f32Tiles: kvTiles === "f32",
        });
      } catch (e) {
        console.log(
          `prefill ${chunk}@${depth} ${JSON.stringify(tiling)} splits ${splits} ${kvTiles}: ${
            (e as Error).message
          }`,
        );
        continue;
      }
      const { us } = await timeOps(gpu, [op], slow);
      const variant = `${tiling ? `${tiling.rows}x${tiling.keys}` : "default"}${
        splits > 1 ? ` splits ${splits}` : ""
      }${kvTiles === "f32" ? " f32 tiles" : ""}`;
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
        let ops: GpuOp[];
        try {
          ops = Array.from(
            { length: layers },
            (_, layer) =>
              createFlashDecode(gpu, {
                label: "decode",
                kv,
                layer,
                qHeads,
                q,
                out,
                tileSteps,
                rotateTiles,
                fusedReduce,
                ...(splits === "direct" ? { step, directKeys: depth } : { splits }),
              }),
          );
        } catch (e) {
          console.log(`decode @${depth} ${variant}: ${(e as Error).message}`);
          continue;
        }
        const { us } = await timeOps(gpu, ops, slow); // per op: one layer
        print({ test: "decode", depth, variant, us, gbs: perLayer / (us * 1e-6) / 1e9 });
      }
    }
  }
  q.destroy();
  out.destroy();
  kv.destroy();
}

if (values.out) saveJson(values.out, { device: gpu.description, headDim: D, qHeads, kvHeads, rows });

import { deepEqual, equal, ok } from "node:assert/strict";
import { getGpu } from "../src/gpu/device.ts";
import { createQkvMatvec } from "../src/gpu/ops/fused.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { createWgkvAppend } from "../src/gpu/ops/wgkv_append.ts";
import { createWgkvPromote } from "../src/gpu/ops/wgkv_promote.ts";
import type { DualCache } from "../src/kv/dual_cache.ts";
import type { KvPolicy, WindowedPolicy } from "../src/kv/wgkv_policy.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import type { GateWeights } from "../src/gate/format.ts";
import { ropeInverseFrequencies } from "../src/model/ops.ts";
import { randomF32, randomWeight } from "./gpu_quant_data.ts";
import {
  expectSameDualCaches,
  nanBuffer as nans,
  runOps,
  twinDualCaches,
  withTinyModel,
} from "./gpu_ops_helpers.ts";

interface RingCase {
  types: [string, string, string];
  cols: number;
  headDim: number;
  qHeads: number;
  kvHeads: number;
  layers: number;
  layer: number;
  window: number;
  maxBatch: number;
  /** Tokens of each step (at most the window; the ring wraps several times). */
  steps: number[];
  shards?: number;
  tuning?: { rowsPerWorkgroup?: number; tokensPerWorkgroup?: number; maxWorkgroups?: number };
  /** The cache's policy (default wgkv: no flag until the gates; the others admit by rule). */
  policy?: WindowedPolicy;
}

Deno.test("qkv ring store: the fused QKV writes the ring words and slot info createWgkvAppend writes (wgkv: no flags yet; sink, random: by rule)", async () => {
  const gpu = await getGpu();
  const cases: RingCase[] = [
    {
      types: ["Q4_K", "Q4_K", "Q6_K"],
      cols: 256,
      headDim: 8,
      qHeads: 6,
      kvHeads: 3,
      layers: 2,
      layer: 1,
      window: 16,
      maxBatch: 3,
      steps: Array.from({ length: 45 }, (_, i) => [3, 1, 1, 2][i % 4]),
      shards: 3,
    },
    {
      types: ["Q8_0", "F16", "F32"],
      cols: 96,
      headDim: 64,
      qHeads: 4,
      kvHeads: 2,
      layers: 3,
      layer: 2,
      window: 20,
      maxBatch: 1,
      steps: Array.from({ length: 75 }, () => 1),
      shards: 4,
      tuning: { rowsPerWorkgroup: 2, maxWorkgroups: 7 },
    },
    {
      types: ["Q4_0", "Q8_0", "F16"],
      cols: 64,
      headDim: 16,
      qHeads: 4,
      kvHeads: 2,
      layers: 2,
      layer: 1,
      window: 16,
      maxBatch: 2,
      steps: Array.from({ length: 50 }, (_, i) => 1 + (i % 2)),
      policy: { kind: "random", window: 16, rate: 0.3, seed: 1234567 },
    },
    {
      types: ["F32", "F32", "F32"],
      cols: 32,
      headDim: 8,
      qHeads: 2,
      kvHeads: 1,
      layers: 1,
      layer: 0,
      window: 16,
      maxBatch: 1,
      steps: Array.from({ length: 40 }, () => 1),
      policy: { kind: "sink", window: 16, sinks: 3 },
    },
  ];
  for (const c of cases) {
    const what =
      `${c.policy?.kind ?? "wgkv"} ${c.types.join("/")} head_dim ${c.headDim} kv_heads ${c.kvHeads} ` +
      `layer ${c.layer}`;
    const qRows = c.qHeads * c.headDim, kvRows = c.kvHeads * c.headDim;
    const [refKv, fusedKv] = await twinDualCaches(gpu, c, 90, 64);
    equal(refKv.shards.length, c.shards ?? 1, what);
    const C = refKv.ringTokens;
    ok(c.steps.reduce((a, b) => a + b, 0) > 2 * C, `${what}: the ring wraps twice`);
    const wq = randomWeight(gpu, "attn_q", c.types[0], qRows, c.cols);
    const wk = randomWeight(gpu, "attn_k", c.types[1], kvRows, c.cols);
    const wv = randomWeight(gpu, "attn_v", c.types[2], kvRows, c.cols);
    const step = new StepParams(gpu, c.maxBatch);
    const xBuf = gpu.buffer("x", c.maxBatch * c.cols * 4);
    const rope = {
      headDim: c.headDim,
      invFreq: ropeInverseFrequencies(c.headDim, 10000 + Math.random() * 1000),
      maxPosition: 4096,
    };
    const refOut = [qRows, kvRows, kvRows].map((rows, i) => nans(gpu, `ref ${i}`, c.maxBatch * rows));
    const fusedOut = [qRows, kvRows, kvRows].map((rows, i) => nans(gpu, `fused ${i}`, c.maxBatch * rows));
    const noFlags = gpu.buffer("no flags", c.maxBatch * c.layers * c.kvHeads * 4);
    const qkv = (out: GPUBuffer[], kv?: DualCache) =>
      createQkvMatvec(gpu, {
        label: kv ? "qkv+ring" : "qkv",
        wq: wq.weight,
        wk: wk.weight,
        wv: wv.weight,
        x: xBuf,
        q: out[0],
        k: out[1],
        v: out[2],
        maxTokens: c.maxBatch,
        step,
        rope,
        tuning: c.tuning,
        append: kv ? { kv, layer: c.layer } : undefined,
      });
    // Both caches promote by the same (CPU-side) flags, so their global pages match too.
    const ops = [
      createWgkvPromote(gpu, { label: "promote ref", kv: refKv }),
      createWgkvPromote(gpu, { label: "promote fused", kv: fusedKv }),
      qkv(refOut),
      createWgkvAppend(gpu, {
        label: "append",
        kv: refKv,
        layer: c.layer,
        maxTokens: c.maxBatch,
        k: refOut[1],
        v: refOut[2],
        gateFlags: noFlags,
        step,
      }),
      qkv(fusedOut, fusedKv),
    ];
    const slot = refKv.openSequence();
    equal(fusedKv.openSequence(), slot);
    let pos = 0;
    for (const m of c.steps) {
      for (const kv of [refKv, fusedKv]) kv.beginStep(slot, m, pos);
      gpu.device.queue.writeBuffer(xBuf, 0, randomF32(c.maxBatch * c.cols) as Float32Array<ArrayBuffer>);
      const got = await runOps(gpu, ops, step, m, pos, [...refOut, ...fusedOut]);
      for (let n = 0; n < 3; n++) {
        deepEqual(
          new Uint32Array(got[3 + n].buffer, 0, m * (n === 0 ? qRows : kvRows)),
          new Uint32Array(got[n].buffer, 0, m * (n === 0 ? qRows : kvRows)),
          `${what}: output ${"qkv"[n]} at ${pos}`,
        );
      }
      // Random flags on the CPU side: some tokens are promoted, by both caches alike.
      const flags = Array.from({ length: m * c.layers * c.kvHeads }, () => Math.random() < 0.3 ? 1 : 0);
      for (const kv of [refKv, fusedKv]) kv.endStep(slot, flags);
      pos += m;
    }
    const { info, nonZero } = await expectSameDualCaches(gpu, refKv, fusedKv, what);
    // The ring of the op's layer: the newest position of every slot, admitted by the policy's rule (so
    // never for wgkv, whose gates set the flags later).
    let admitted = 0;
    for (let h = 0; h < c.kvHeads; h++) {
      const row = (slot * c.layers + c.layer) * c.kvHeads + h;
      for (let s = 0; s < C; s++) {
        const newest = pos - 1 - ((pos - 1 - s) % C + C) % C;
        equal(info[row * C + s] >>> 1, newest, `${what}: head ${h} slot ${s}`);
        admitted += info[row * C + s] & 1;
      }
    }
    if (c.policy?.kind === "random") {
      ok(admitted > 0 && admitted < c.kvHeads * C, `${what}: ${admitted} admitted`);
    } else equal(admitted, 0, `${what}: none admitted`);
    // Every ring slot of the layer holds a token (K and V words), plus the promoted ones.
    const globalTokens = refKv.stats().globalTokens;
    let promoted = 0;
    for (let h = 0; h < c.kvHeads; h++) promoted += globalTokens[c.layer * c.kvHeads + h];
    equal(nonZero, (c.kvHeads * C + promoted) * c.headDim, `${what}: words written`);
    for (const b of [xBuf, noFlags, ...refOut, ...fusedOut, step.buffer]) b.destroy();
    for (const w of [wq, wk, wv]) w.weight.destroy();
    refKv.destroy();
    fusedKv.destroy();
  }
});

Deno.test("gpu model: window, sink and random decode through the QKV ring store give the logits, tokens and stats of the append dispatch", async () => {
  const gpu = await getGpu();
  await withTinyModel(async (file, hp) => {
    const policies: KvPolicy<GateWeights>[] = [
      { kind: "random", window: 16, rate: 0.3, seed: 99 },
      { kind: "sink", window: 16, sinks: 3 },
      { kind: "window", window: 16 },
    ];
    for (const policy of policies) {
      const load = (fuseWgkvAppend: boolean) =>
        GpuModel.load(gpu, file, hp, { contextLength: 128, maxBatch: 8, policy, fuseWgkvAppend });
      const fused = await load(true);
      const separate = await load(false);
      try {
        const appends = (m: GpuModel) => m.decodeLabels.filter((l) => l.endsWith("kv_append")).length;
        equal(appends(fused), 0, `${policy.kind}: no append dispatch`);
        equal(appends(separate), hp.nLayer, `${policy.kind}: an append dispatch per layer`);
        const tokens = Array.from({ length: 21 }, () => Math.floor(Math.random() * hp.nVocab));
        // Prefill, stepwise decode and a chain: 21 + 4 + 20 positions go around the 32-slot ring.
        const run = async (m: GpuModel) => {
          const logits = [await m.forward(tokens, 0, "logits")];
          let next = 5;
          for (let i = 0; i < 4; i++) {
            logits.push(await m.forward([next], tokens.length + i, "logits"));
            next = (next * 31 + 7) % hp.nVocab;
          }
          const chained = await m.decodeGreedy(next, tokens.length + 4, 20);
          return { logits, chained, stats: m.kvStats().dual! };
        };
        const a = await run(fused), b = await run(separate);
        a.logits.forEach((l, i) => deepEqual(l, b.logits[i], `${policy.kind}: step ${i}: logits`));
        deepEqual(a.chained, b.chained, `${policy.kind}: chained tokens`);
        deepEqual([...a.stats.globalTokens], [...b.stats.globalTokens], `${policy.kind}: global tokens`);
        if (policy.kind !== "window") {
          ok(a.stats.globalTokens.some((g) => g > 0), `${policy.kind}: tokens were kept`);
        }
      } finally {
        fused.destroy();
        separate.destroy();
      }
    }
  });
});

Deno.test("gpu model: a dual cache's global pages taken in runs give the logits and tokens of pages taken one at a time", async () => {
  const gpu = await getGpu();
  await withTinyModel(async (file, hp) => {
    const policy: KvPolicy<GateWeights> = { kind: "random", window: 16, rate: 0.9, seed: 7 };
    const load = (globalPageRun: number) =>
      GpuModel.load(gpu, file, hp, { contextLength: 1024, maxBatch: 64, policy, globalPageRun });
    const runs = await load(32), single = await load(1);
    try {
      // 700 tokens, 90% admitted: each row fills about 40 global pages, so its runs reach 2 pages.
      const tokens = Array.from({ length: 700 }, () => Math.floor(Math.random() * hp.nVocab));
      const run = async (m: GpuModel) => {
        const logits = await m.forward(tokens, 0, "logits");
        const chained = await m.decodeGreedy(3, tokens.length, 12);
        return { logits, chained, stats: m.kvStats().dual! };
      };
      const a = await run(runs), b = await run(single);
      deepEqual(a.logits, b.logits, "prefill logits");
      deepEqual(a.chained, b.chained, "decoded tokens");
      deepEqual([...a.stats.globalTokens], [...b.stats.globalTokens], "global tokens");
      ok(a.stats.globalPages > b.stats.globalPages, "pages taken ahead count as held");
      ok(Math.min(...b.stats.globalTokens) > 33 * 16, "rows past 32 pages");
    } finally {
      runs.destroy();
      single.destroy();
    }
  });
});

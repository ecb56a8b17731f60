import { deepEqual, equal, ok, throws } from "node:assert/strict";
import { BadFlagError, UnsupportedError } from "../src/errors.ts";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import { createQkvMatvec, type FoldedNormInput } from "../src/gpu/ops/fused.ts";
import { createKvAppend } from "../src/gpu/ops/kv_append.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { QKV_STORAGE_BINDINGS, qkvKvAppendBlocker } from "../src/gpu/ops/qkv_kv_store.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
import { PAGE_TOKENS } from "../src/kv/page_pool.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import { rope, ropeInverseFrequencies } from "../src/model/ops.ts";
import { products, randomF32, randomWeight } from "./gpu_quant_data.ts";
import { nanBuffer as nans, runOps, withTinyModel } from "./gpu_ops_helpers.ts";

const TOL = 2e-5;

interface AppendCase {
  types: [string, string, string];
  cols: number;
  headDim: number;
  qHeads: number;
  kvHeads: number;
  layers: number;
  layer: number;
  /** Tokens already in the cache before the first step (their pages stay as they are). */
  prior: number;
  /** Tokens of each step. */
  steps: number[];
  /** Pool shards (the pool split evenly), or one. */
  shards?: number;
  rope: boolean;
  /** Folded RMSNorm input (norm_mode 2) with this many partial sums per token. */
  normPartials?: number;
  kPre: boolean;
  tuning?: { rowsPerWorkgroup?: number; tokensPerWorkgroup?: number; maxWorkgroups?: number };
}

/** Two caches of the same shape whose pools hand out the same, scattered pages. */
async function twinCaches(gpu: Gpu, c: AppendCase, maxTokens: number): Promise<[KvCache, KvCache]> {
  const tokens = c.prior + c.steps.reduce((a, b) => a + b, 0) + maxTokens;
  const pages = c.layers * c.kvHeads * Math.ceil(tokens / PAGE_TOKENS) + 13;
  const make = async () => {
    const kv = await KvCache.create(gpu, {
      layers: c.layers,
      kvHeads: c.kvHeads,
      headDim: c.headDim,
      maxTokensPerHead: tokens,
      pages,
      maxShardBytes: c.shards ? Math.ceil(pages / c.shards) * PAGE_TOKENS * c.headDim * 4 : undefined,
    });
    const junk = kv.pool.allocate(13);
    kv.pool.release(junk.filter((_, i) => i % 2 === 0)); // scatter the free list
    return kv;
  };
  return [await make(), await make()];
}

Deno.test("qkv kv append: the fused QKV writes the pages createKvAppend writes, word for word (odd shapes, shards, norm, k_pre)", async () => {
  const gpu = await getGpu();
  const cases: AppendCase[] = [
    {
      types: ["Q4_K", "Q4_K", "Q6_K"],
      cols: 256,
      headDim: 8,
      qHeads: 6,
      kvHeads: 3,
      layers: 2,
      layer: 1,
      prior: 13,
      steps: [3, 1, 1, 3],
      shards: 3,
      rope: true,
      kPre: false,
    },
    {
      types: ["Q8_0", "Q5_0", "F16"],
      cols: 96,
      headDim: 64,
      qHeads: 4,
      kvHeads: 2,
      layers: 3,
      layer: 0,
      prior: 30,
      steps: [1, 1, 3],
      shards: 4,
      rope: true,
      normPartials: 3,
      kPre: true,
      tuning: { tokensPerWorkgroup: 2 },
    },
    {
      types: ["F32", "BF16", "Q4_1"],
      cols: 64,
      headDim: 16,
      qHeads: 2,
      kvHeads: 1,
      layers: 1,
      layer: 0,
      prior: 0,
      steps: [1, 2, 1],
      rope: false,
      kPre: false,
      tuning: { rowsPerWorkgroup: 6 },
    },
    {
      types: ["Q2_K", "Q3_K", "Q5_1"],
      cols: 256,
      headDim: 8,
      qHeads: 4,
      kvHeads: 2,
      layers: 2,
      layer: 1,
      prior: 47,
      steps: [1, 3],
      shards: 8,
      rope: true,
      normPartials: 5,
      kPre: false,
      tuning: { rowsPerWorkgroup: 8, tokensPerWorkgroup: 1 },
    },
    {
      // Fewer workgroups than row groups: each takes several in turn, across Q, K and V.
      types: ["Q4_K", "Q6_K", "Q8_0"],
      cols: 256,
      headDim: 8,
      qHeads: 4,
      kvHeads: 2,
      layers: 1,
      layer: 0,
      prior: 21,
      steps: [2, 1],
      rope: true,
      // Many partial sums per token: the consumer's loop of four loads per thread runs several rounds.
      normPartials: 1100,
      kPre: true,
      tuning: { rowsPerWorkgroup: 2, tokensPerWorkgroup: 2, maxWorkgroups: 5 },
    },
  ];
  for (const c of cases) {
    const what = `${c.types.join("/")} head_dim ${c.headDim} kv_heads ${c.kvHeads} steps ${c.steps}`;
    const qRows = c.qHeads * c.headDim;
    const kvRows = c.kvHeads * c.headDim;
    const maxTokens = Math.max(...c.steps);
    const [refKv, fusedKv] = await twinCaches(gpu, c, maxTokens);
    equal(refKv.shards.length, c.shards ?? 1, what);
    const wq = randomWeight(gpu, "attn_q", c.types[0], qRows, c.cols);
    const wk = randomWeight(gpu, "attn_k", c.types[1], kvRows, c.cols);
    const wv = randomWeight(gpu, "attn_v", c.types[2], kvRows, c.cols);
    const step = new StepParams(gpu, maxTokens);
    const xBuf = gpu.buffer("x", maxTokens * c.cols * 4);
    const invFreq = ropeInverseFrequencies(c.headDim, 10000 + Math.random() * 1000);
    const ropeOption = c.rope ? { headDim: c.headDim, invFreq, maxPosition: 4096 } : undefined;
    const partials = c.normPartials ?? 0;
    const sumsBuf = gpu.buffer("norm sums", Math.max(1, maxTokens * partials) * 4);
    const norm: FoldedNormInput | undefined = partials > 0
      ? { sums: sumsBuf, partials, width: c.cols, eps: 1e-5 }
      : undefined;
    // [q, k, v, k before RoPE] of the reference (QKV, then the append op) and of the fused op.
    const refOut = [qRows, kvRows, kvRows, kvRows].map((rows, i) => nans(gpu, `ref ${i}`, maxTokens * rows));
    const fusedOut = [qRows, kvRows, kvRows, kvRows].map((rows, i) =>
      nans(gpu, `fused ${i}`, maxTokens * rows)
    );
    const qkv = (out: GPUBuffer[], append?: { kv: KvCache; layer: number }) =>
      createQkvMatvec(gpu, {
        label: append ? "qkv+append" : "qkv",
        wq: wq.weight,
        wk: wk.weight,
        wv: wv.weight,
        x: xBuf,
        q: out[0],
        k: out[1],
        v: out[2],
        kPre: c.kPre ? out[3] : undefined,
        maxTokens,
        step,
        rope: ropeOption,
        norm,
        tuning: c.tuning,
        append,
      });
    const ops = [
      qkv(refOut),
      createKvAppend(gpu, {
        label: "append",
        kv: refKv,
        layer: c.layer,
        maxTokens,
        k: refOut[1],
        v: refOut[2],
        step,
      }),
      qkv(fusedOut, { kv: fusedKv, layer: c.layer }),
    ];
    const slot = refKv.openSequence();
    equal(fusedKv.openSequence(), slot);
    for (const kv of [refKv, fusedKv]) kv.append(slot, c.prior);
    let stored = 0;
    for (const m of c.steps) {
      const pos0 = refKv.length(slot, c.layer, 0);
      for (const kv of [refKv, fusedKv]) {
        kv.append(slot, m);
        kv.selectSequence(slot);
        kv.flush();
      }
      const x = randomF32(maxTokens * c.cols);
      gpu.device.queue.writeBuffer(xBuf, 0, x);
      // Σ y² of the producer's workgroups: the RMS of each token comes out between ~0.5 and ~2.
      const sums = Float32Array.from({ length: maxTokens * partials }, () => (0.25 + Math.random()) * c.cols);
      if (partials > 0) gpu.device.queue.writeBuffer(sumsBuf, 0, sums);
      const got = await runOps(gpu, ops, step, m, pos0, [...refOut, ...fusedOut]);
      // The fused op's Q, K, V (and K before RoPE) are the plain op's, bit for bit.
      for (let n = 0; n < (c.kPre ? 4 : 3); n++) {
        deepEqual(
          new Uint32Array(got[4 + n].buffer),
          new Uint32Array(got[n].buffer),
          `${what}: output ${"qkvp"[n]} differs with the append`,
        );
      }
      // … and the CPU's.
      const scale = Array.from({ length: m }, (_, t) => {
        if (partials === 0) return 1;
        let total = 0;
        for (let i = 0; i < partials; i++) total += sums[t * partials + i];
        return 1 / Math.sqrt(total / c.cols + 1e-5);
      });
      for (
        const [n, w, rows, heads] of [[0, wq.w, qRows, c.qHeads], [1, wk.w, kvRows, c.kvHeads], [
          2,
          wv.w,
          kvRows,
          0,
        ]] as const
      ) {
        const { sum, abs } = products(w, x, m, rows, c.cols);
        const want = Float32Array.from(sum, (s, i) => s * scale[Math.floor(i / rows)]);
        if (c.rope && heads > 0) {
          for (let t = 0; t < m; t++) {
            rope(want.subarray(t * rows, (t + 1) * rows), heads, c.headDim, pos0 + t, invFreq);
          }
        }
        for (let i = 0; i < m * rows; i++) {
          const t = Math.floor(i / rows);
          const mag = (c.rope && heads > 0 ? Math.max(abs[i], abs[i ^ 1]) : abs[i]) * scale[t];
          ok(
            Math.abs(got[4 + n][i] - want[i]) <= 2 * TOL * mag + 1e-30,
            `${what}: ${"qkv"[n]}[${i}] = ${got[4 + n][i]}, expected ${want[i]}`,
          );
        }
      }
      stored += m;
    }
    // Both pools, word for word: the same pages written with the same f16 pairs, nothing else.
    const words = (kv: KvCache) =>
      Promise.all(kv.shards.map(async (b) => new Uint32Array(await gpu.read(b))));
    const refWords = await words(refKv);
    const fusedWords = await words(fusedKv);
    for (let h = 0; h < c.kvHeads; h++) {
      deepEqual(
        fusedKv.pagesOf(slot, c.layer, h),
        refKv.pagesOf(slot, c.layer, h),
        `${what}: head ${h} pages`,
      );
    }
    let nonZero = 0;
    refWords.forEach((shard, s) => {
      for (let i = 0; i < shard.length; i++) {
        if (fusedWords[s][i] !== shard[i]) {
          throw new Error(
            `${what}: shard ${s} word ${i} is ${fusedWords[s][i]}, createKvAppend wrote ${shard[i]}`,
          );
        }
        if (shard[i] !== 0) nonZero++;
      }
    });
    // Every K and V pair of the steps' tokens was written (a random pair rounding to two f16 zeros is
    // far too unlikely to matter).
    equal(nonZero, stored * c.kvHeads * c.headDim, `${what}: words written`);
    for (const b of [xBuf, sumsBuf, ...refOut, ...fusedOut, step.buffer]) b.destroy();
    for (const w of [wq, wk, wv]) w.weight.destroy();
    refKv.destroy();
    fusedKv.destroy();
  }
});

Deno.test("qkv kv append: when it applies, and one-line errors", async () => {
  const gpu = await getGpu();
  const headDim = 8, kvHeads = 2, cols = 64;
  const kv = await KvCache.create(gpu, {
    layers: 2,
    kvHeads,
    headDim,
    maxTokensPerHead: 64,
    maxShardBytes: 2 * PAGE_TOKENS * headDim * 4,
  });
  const shards = kv.shards.length;
  ok(shards >= 2);
  const wq = randomWeight(gpu, "attn_q", "F32", 4 * headDim, cols).weight;
  const wk = randomWeight(gpu, "attn_k", "F32", kvHeads * headDim, cols).weight;
  const wv = randomWeight(gpu, "attn_v", "F32", kvHeads * headDim, cols).weight;
  const narrow = randomWeight(gpu, "attn_v", "F32", headDim, cols).weight;
  // The storage bindings: the kernel's own, block table and lengths, one per shard.
  const needed = QKV_STORAGE_BINDINGS + 2 + shards;
  equal(qkvKvAppendBlocker({ maxStorageBuffersPerShaderStage: needed }, kv, wk, wv), undefined);
  ok(/binds \d+ storage buffers .* allows/.test(
    qkvKvAppendBlocker({ maxStorageBuffersPerShaderStage: needed - 1 }, kv, wk, wv) ?? "",
  ));
  ok(/has 8 rows, the KV cache 2 heads × 8 = 16/.test(qkvKvAppendBlocker(gpu.limits, kv, wk, narrow) ?? ""));
  const step = new StepParams(gpu, 1);
  const buf = (rows: number) => gpu.buffer("out", rows * 4);
  const base = {
    label: "qkv",
    wq,
    wk,
    wv,
    x: buf(cols),
    q: buf(wq.rows),
    k: buf(wk.rows),
    v: buf(wv.rows),
    maxTokens: 1,
    step,
    rope: { headDim, invFreq: ropeInverseFrequencies(headDim, 10000), maxPosition: 64 },
    append: { kv, layer: 1 },
  };
  createQkvMatvec(gpu, base);
  throws(() => createQkvMatvec(gpu, { ...base, append: { kv, layer: 2 } }), BadFlagError);
  throws(() => createQkvMatvec(gpu, { ...base, wv: narrow, v: buf(narrow.rows) }), UnsupportedError);
  throws(
    () => createQkvMatvec(gpu, { ...base, rope: { ...base.rope, headDim: 4, invFreq: new Float32Array(2) } }),
    /rope.headDim 4 is not the KV cache's 8/,
  );
  throws(
    () => createQkvMatvec(gpu, { ...base, rope: undefined, tuning: { rowsPerWorkgroup: 3 } }),
    /rowsPerWorkgroup must be even with the KV append/,
  );
  kv.destroy();
});

Deno.test("gpu model: decode with the KV append in the fused QKV gives the logits of the separate append", async () => {
  const gpu = await getGpu();
  await withTinyModel(async (file, hp) => {
    const load = (fuseKvAppend: boolean) =>
      GpuModel.load(gpu, file, hp, { contextLength: 64, maxBatch: 8, fuseKvAppend });
    const fused = await load(true);
    const separate = await load(false);
    try {
      const appends = (m: GpuModel) => m.decodeLabels.filter((l) => l.endsWith("kv_append")).length;
      equal(appends(fused), 0);
      equal(appends(separate), hp.nLayer);
      const prompt = Array.from({ length: 19 }, () => Math.floor(Math.random() * hp.nVocab));
      const logits = async (m: GpuModel) => {
        const out = [await m.forward(prompt, 0, "logits")];
        let next = 3;
        for (let i = 0; i < 4; i++) {
          out.push(await m.forward([next], prompt.length + i, "logits"));
          next = (next * 31 + 7) % hp.nVocab;
        }
        // Chained greedy steps read the keys the fused op stored.
        const chained = await m.decodeGreedy(next, prompt.length + 4, 6);
        return { out, chained };
      };
      const a = await logits(fused);
      const b = await logits(separate);
      a.out.forEach((l, i) => deepEqual(l, b.out[i], `step ${i}`));
      deepEqual(a.chained, b.chained);
    } finally {
      fused.destroy();
      separate.destroy();
    }
  });
});

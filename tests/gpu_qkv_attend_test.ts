import { equal, ok, throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { createQkvMatvec, type FusedMatvecTuning } from "../src/gpu/ops/fused.ts";
import { createKvAppend } from "../src/gpu/ops/kv_append.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import {
  QKV_ATTEND_MAX_TILES,
  qkvAttendBlocker,
  qkvAttendMaxKeys,
  qkvAttendWorkgroupBytes,
} from "../src/gpu/ops/qkv_attend.ts";
import { QKV_STORAGE_BINDINGS } from "../src/gpu/ops/qkv_kv_store.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
import { PAGE_TOKENS } from "../src/kv/page_pool.ts";
import type { PagedKvView } from "../src/kv/paged_view.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import { attendOne, ropeInverseFrequencies } from "../src/model/ops.ts";
import { randomF32, randomWeight } from "./gpu_quant_data.ts";
import { relativeError, withTinyModel } from "./gpu_ops_helpers.ts";

interface AttendCase {
  types: [string, string, string];
  cols: number;
  headDim: number;
  qHeads: number;
  kvHeads: number;
  /** Tokens in the cache before the decode step (the step's token makes one more). */
  prior: number;
  shards?: number;
  tuning?: FusedMatvecTuning;
}

/**
 * Fills layer 1 of a two-layer cache with `prior` random keys and values, runs the fused QKV with the KV
 * append and the attention tail for one token at position `prior` (twice in one pass, the output reset to
 * NaN between: the second run must find the arrival counters at zero), and compares every attention output
 * with the CPU reference over the stored keys and the op's own Q, K and V. Then runs it with `maxKeys` one
 * short of the row: the tail must not run (the output stays NaN).
 */
async function checkAttend(c: AttendCase): Promise<void> {
  const gpu = await getGpu();
  const what = `${c.types.join("/")} head_dim ${c.headDim} heads ${c.qHeads}/${c.kvHeads} prior ${c.prior} ` +
    JSON.stringify(c.tuning ?? {});
  const D = c.headDim, qRows = c.qHeads * D, kvRows = c.kvHeads * D, group = c.qHeads / c.kvHeads;
  const tokens = c.prior + 1;
  const pages = 2 * c.kvHeads * Math.ceil(tokens / PAGE_TOKENS) + 9;
  const kv = await KvCache.create(gpu, {
    layers: 2,
    kvHeads: c.kvHeads,
    headDim: D,
    maxTokensPerHead: tokens,
    pages,
    maxShardBytes: c.shards ? Math.ceil(pages / c.shards) * PAGE_TOKENS * D * 4 : undefined,
  });
  kv.pool.release(kv.pool.allocate(9).filter((_, i) => i % 2 === 0)); // scatter the free list
  const wq = randomWeight(gpu, "attn_q", c.types[0], qRows, c.cols);
  const wk = randomWeight(gpu, "attn_k", c.types[1], kvRows, c.cols);
  const wv = randomWeight(gpu, "attn_v", c.types[2], kvRows, c.cols);
  const step = new StepParams(gpu, Math.max(1, c.prior));
  const buffers: GPUBuffer[] = [];
  const buf = (label: string, floats: number, data?: Float32Array<ArrayBuffer>) => {
    const b = gpu.buffer(label, Math.max(1, floats) * 4, data);
    buffers.push(b);
    return b;
  };
  try {
    const priorK = randomF32(c.prior * kvRows), priorV = randomF32(c.prior * kvRows);
    const x = randomF32(c.cols);
    const kIn = buf("prior k", c.prior * kvRows, priorK), vIn = buf("prior v", c.prior * kvRows, priorV);
    const xBuf = buf("x", c.cols, x);
    const q = buf("q", qRows), k = buf("k", kvRows), v = buf("v", kvRows);
    const out = buf("out", qRows), nan = buf("nan", qRows, new Float32Array(qRows).fill(NaN));
    const arrivals = buf("arrivals", c.kvHeads);
    const slot = kv.openSequence();
    kv.selectSequence(slot);
    if (c.prior > 0) {
      kv.append(slot, c.prior);
      kv.flush();
      step.set(c.prior, 0);
      const encoder = gpu.device.createCommandEncoder();
      const pass = encoder.beginComputePass();
      createKvAppend(gpu, { label: "prior", kv, layer: 1, maxTokens: c.prior, k: kIn, v: vIn, step }).encode(
        pass,
      );
      pass.end();
      gpu.device.queue.submit([encoder.finish()]);
    }
    kv.append(slot, 1);
    kv.flush();
    const qkv = (maxKeys: number) =>
      createQkvMatvec(gpu, {
        label: "qkv+attend",
        wq: wq.weight,
        wk: wk.weight,
        wv: wv.weight,
        x: xBuf,
        q,
        k,
        v,
        maxTokens: 1,
        step,
        rope: { headDim: D, invFreq: ropeInverseFrequencies(D, 10000), maxPosition: 4096 },
        append: { kv, layer: 1 },
        attend: { out, arrivals, maxKeys },
        tuning: c.tuning,
      });
    const op = qkv(tokens);
    equal(op.attendBlocker, undefined, what);
    equal(op.attendsUpTo, tokens, what);
    const run = async (ops: ReturnType<typeof qkv>[]) => {
      step.set(1, c.prior);
      const encoder = gpu.device.createCommandEncoder();
      encoder.copyBufferToBuffer(nan, 0, out, 0, qRows * 4);
      for (const [i, o] of ops.entries()) {
        if (i > 0) encoder.copyBufferToBuffer(nan, 0, out, 0, qRows * 4);
        const pass = encoder.beginComputePass();
        o.encode(pass);
        pass.end();
      }
      gpu.device.queue.submit([encoder.finish()]);
      return await Promise.all([out, q, k, v].map((b) => gpu.readF32(b)));
    };
    const [got, qGot, kGot, vGot] = await run([op, op]);
    const counts = await gpu.readU32(arrivals, 0, c.kvHeads);
    ok(counts.every((n) => n === 0), `${what}: arrival counters left at ${counts}`);
    const want = new Float32Array(qRows);
    for (let h = 0; h < c.kvHeads; h++) {
      const keys = new Float32Array(tokens * D), values = new Float32Array(tokens * D);
      for (let t = 0; t < tokens; t++) {
        for (let d = 0; d < D; d++) {
          const from = t < c.prior ? (t * c.kvHeads + h) * D + d : h * D + d;
          keys[t * D + d] = Math.f16round(t < c.prior ? priorK[from] : kGot[from]);
          values[t * D + d] = Math.f16round(t < c.prior ? priorV[from] : vGot[from]);
        }
      }
      for (let j = 0; j < group; j++) {
        const hq = h * group + j;
        attendOne(want, qGot, keys, values, tokens, D, D, 0, 1 / Math.sqrt(D), hq * D, hq * D);
      }
    }
    for (let i = 0; i < qRows; i++) {
      ok(
        Math.abs(got[i] - want[i]) <= 1e-4 + 1e-4 * Math.abs(want[i]),
        `${what}: out[${i}] = ${got[i]}, want ${want[i]}`,
      );
    }
    // One key past maxKeys: the plain QKV (same Q, K and V), no attention.
    const [untouched, qPlain] = await run([qkv(c.prior)]);
    ok(untouched.every(Number.isNaN), `${what}: attended past maxKeys`);
    ok(qPlain.every((value, i) => value === qGot[i]), `${what}: Q differs without the tail`);
  } finally {
    for (const b of buffers) b.destroy();
    step.buffer.destroy();
    for (const w of [wq, wk, wv]) w.weight.destroy();
    kv.destroy();
  }
}

Deno.test("qkv attend: the fused QKV's attention tail matches the CPU over the cache and its own Q, K, V", async () => {
  const cases: AttendCase[] = [
    // GQA group 4, 38 keys over scattered pages in 2 shards, int8 products where the GPU allows them.
    {
      types: ["Q4_K", "Q4_K", "Q6_K"],
      cols: 256,
      headDim: 64,
      qHeads: 8,
      kvHeads: 2,
      prior: 37,
      shards: 2,
      tuning: { int8: true },
    },
    // Group 5 (two head batches), head_dim 16, fewer workgroups than row groups (each takes several).
    {
      types: ["F16", "F16", "F16"],
      cols: 128,
      headDim: 16,
      qHeads: 10,
      kvHeads: 2,
      prior: 70,
      tuning: { rowsPerWorkgroup: 4, maxWorkgroups: 3 },
    },
    // The first token alone (one key), head_dim 128 (two key lanes of 16 threads in 32).
    { types: ["Q8_0", "Q8_0", "Q8_0"], cols: 64, headDim: 128, qHeads: 4, kvHeads: 1, prior: 0 },
    // A row ending exactly on a page, one query head per KV head, 8 rows per workgroup.
    {
      types: ["F32", "Q5_0", "BF16"],
      cols: 96,
      headDim: 32,
      qHeads: 3,
      kvHeads: 3,
      prior: 31,
      shards: 3,
      tuning: { rowsPerWorkgroup: 8, workgroupSize: 64 },
    },
  ];
  for (const c of cases) await checkAttend(c);
});

Deno.test("qkv attend: when the tail applies, and one-line errors", async () => {
  const gpu = await getGpu();
  const kv = await KvCache.create(gpu, { layers: 1, kvHeads: 2, headDim: 64, maxTokensPerHead: 32 });
  const shape = {
    qRows: 512,
    workgroupSize: 128,
    rowsPerWorkgroup: 2,
    tokensPerWorkgroup: 1,
    workgroupBytes: 4096,
  };
  const limits = { maxStorageBuffersPerShaderStage: 64, maxComputeWorkgroupStorageSize: 1 << 20 };
  equal(qkvAttendBlocker(limits, kv, shape), undefined);
  ok(
    /rows per workgroup do not divide head_dim 64/.test(
      qkvAttendBlocker(limits, kv, { ...shape, rowsPerWorkgroup: 6 })!,
    ),
  );
  ok(/not whole key lanes of 8 threads/.test(qkvAttendBlocker(limits, kv, { ...shape, workgroupSize: 4 })!));
  ok(/not whole GQA groups/.test(qkvAttendBlocker(limits, kv, { ...shape, qRows: 192 })!));
  ok(/one token per workgroup/.test(qkvAttendBlocker(limits, kv, { ...shape, tokensPerWorkgroup: 2 })!));
  const needed = QKV_STORAGE_BINDINGS + 4 + kv.shards.length;
  ok(/binds \d+ storage buffers/.test(
    qkvAttendBlocker({ ...limits, maxStorageBuffersPerShaderStage: needed - 1 }, kv, shape)!,
  ));
  equal(qkvAttendBlocker({ ...limits, maxStorageBuffersPerShaderStage: needed }, kv, shape), undefined);
  const bytes = 4096 + qkvAttendWorkgroupBytes(64, 128);
  ok(/needs \d+ bytes of workgroup memory/.test(
    qkvAttendBlocker({ ...limits, maxComputeWorkgroupStorageSize: bytes - 1 }, kv, shape)!,
  ));
  // (A cache refuses such a head_dim itself; the blocker does not rely on it.)
  const odd = { headDim: 12, kvHeads: 1, shards: kv.shards } as unknown as PagedKvView;
  ok(/head_dim 12 is not a multiple of 8/.test(qkvAttendBlocker(limits, odd, { ...shape, qRows: 24 })!));

  const cols = 64;
  const wq = randomWeight(gpu, "attn_q", "F32", 512, cols).weight;
  const wk = randomWeight(gpu, "attn_k", "F32", 128, cols).weight;
  const wv = randomWeight(gpu, "attn_v", "F32", 128, cols).weight;
  const b = (floats: number) => gpu.buffer("b", floats * 4);
  const base = {
    label: "qkv",
    wq,
    wk,
    wv,
    x: b(2 * cols),
    q: b(2 * 512),
    k: b(2 * 128),
    v: b(2 * 128),
    step: new StepParams(gpu, 2),
    append: { kv, layer: 0 },
  };
  const attend = { out: b(512), arrivals: b(2), maxKeys: 16 };
  equal(createQkvMatvec(gpu, { ...base, maxTokens: 1, attend }).attendsUpTo, 16);
  // Longer rows than a few of the tail's tiles go to the attention dispatch (64 threads: 8 key lanes).
  const long = createQkvMatvec(gpu, {
    ...base,
    maxTokens: 1,
    attend: { ...attend, maxKeys: 100000 },
    tuning: { workgroupSize: 64 },
  });
  equal(long.attendsUpTo, qkvAttendMaxKeys(64, 64));
  equal(qkvAttendMaxKeys(64, 64), QKV_ATTEND_MAX_TILES * 8 * 8);
  // Prefill steps do not attend; the op says why.
  const prefill = createQkvMatvec(gpu, { ...base, maxTokens: 2, attend });
  equal(prefill.attendsUpTo, 0);
  ok(/decode steps of one token, not 2/.test(prefill.attendBlocker!));
  equal(createQkvMatvec(gpu, { ...base, maxTokens: 1, attend: { ...attend, maxKeys: 0 } }).attendsUpTo, 0);
  throws(() => createQkvMatvec(gpu, { ...base, maxTokens: 1, append: undefined, attend }), BadFlagError);
  throws(
    () => createQkvMatvec(gpu, { ...base, maxTokens: 1, attend: { ...attend, out: b(4) } }),
    BadFlagError,
  );
  kv.destroy();
});

Deno.test("gpu model: decode with the attention in the fused QKV gives the logits of the attention dispatch", async () => {
  const gpu = await getGpu();
  await withTinyModel(async (file, hp) => {
    // Rows up to 24 keys take the tail, longer ones the attention dispatch (split path): the steps cross.
    const load = (fuseQkvAttention: boolean) =>
      GpuModel.load(gpu, file, hp, {
        contextLength: 64,
        maxBatch: 8,
        decodeDirectKeys: 24,
        fuseQkvAttention,
      });
    const fused = await load(true);
    const separate = await load(false);
    try {
      const prompt = Array.from({ length: 19 }, () => Math.floor(Math.random() * hp.nVocab));
      for (const m of [fused, separate]) await m.forward(prompt, 0, "logits");
      for (let i = 0; i < 9; i++) {
        const token = Math.floor(Math.random() * hp.nVocab);
        const a = await fused.forward([token], prompt.length + i, "logits");
        const b = await separate.forward([token], prompt.length + i, "logits");
        const err = relativeError(a, b);
        // The two sum in different orders, and a step's difference reaches the next layers' cached keys:
        // rounding, a few 1e-6 of the logits' scale.
        ok(err <= 5e-5, `step ${i} (${prompt.length + i + 1} keys): logits differ by ${err}`);
      }
    } finally {
      fused.destroy();
      separate.destroy();
    }
  }, { type: "q4_k_m" });
});

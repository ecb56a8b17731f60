import { ok, throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { createFlashDecode, decodeArrivalsBytes } from "../src/gpu/ops/attention.ts";
import { createKvAppend } from "../src/gpu/ops/kv_append.ts";
import { createChainedInt8 } from "../src/gpu/ops/int8_input.ts";
import { int8InputReference } from "../src/gpu/ops/matvec_units.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
import { attendOne } from "../src/model/ops.ts";
import { subgroupsOrEmulated } from "./gpu_ops_helpers.ts";

/** Random values in [-2, 2), never all zero. */
function random(n: number): Float32Array<ArrayBuffer> {
  return Float32Array.from({ length: n }, () => Math.random() * 4 - 2);
}

interface Case {
  headDim: number;
  kvHeads: number;
  group: number;
  /** Tokens appended to every row, then rows are cut to `cuts[head]` tokens where given. */
  tokens: number;
  cuts?: number[];
  splits: number;
  tileSteps?: number;
  keyLanes?: number;
  /** Each key's dot products summed by subgroup shuffles (or "emulated"; default: a thread per key). */
  subgroups?: boolean | "emulated";
  rotateTiles?: boolean;
  /** Run the one-dispatch direct mode (the query at position tokens − 1, directKeys = tokens). */
  direct?: boolean;
  /** The direct mode's key lanes (default: keyLanes). */
  directKeyLanes?: number;
  /** Every row holds `tokens` keys: the slots planned from the position (no cuts with this). */
  uniformRows?: boolean;
  /** The split path's merge: in the partial pass (default) or a reduce pass (false). */
  fusedReduce?: boolean;
  /** Also write the outputs as int8 blocks of 16 (FlashDecodeOptions.int8Out), checked against them. */
  int8Out?: boolean;
}

/**
 * Fills one layer of a cache with random keys and values, cuts rows to ragged lengths, runs the decode op
 * on a random query and compares every output with the CPU reference (outputs start as NaN). The op runs
 * twice in one pass, the outputs reset to NaN between: the second run must find the arrival counters back
 * at zero (checked afterwards too).
 */
async function checkDecode(c: Case): Promise<void> {
  const gpu = await getGpu();
  const { headDim: D, kvHeads, group, tokens, splits } = c;
  const qHeads = kvHeads * group;
  const kv = await KvCache.create(gpu, {
    layers: 1,
    kvHeads,
    headDim: D,
    maxTokensPerHead: tokens,
    pages: kvHeads * Math.ceil(tokens / 16) + 7,
  });
  try {
    const slot = kv.openSequence();
    const step = new StepParams(gpu, tokens);
    const kBuf = gpu.buffer("k", tokens * kvHeads * D * 4);
    const vBuf = gpu.buffer("v", tokens * kvHeads * D * 4);
    const qBuf = gpu.buffer("q", qHeads * D * 4);
    const outBuf = gpu.buffer("out", qHeads * D * 4);
    const arrivalBytes = decodeArrivalsBytes(kvHeads, qHeads);
    const arrivals = gpu.buffer("arrivals", arrivalBytes);
    const nanBuf = gpu.buffer("nan", qHeads * D * 4);
    const append = createKvAppend(gpu, {
      label: "append",
      kv,
      layer: 0,
      maxTokens: tokens,
      k: kBuf,
      v: vBuf,
      step,
    });
    const k = random(tokens * kvHeads * D), v = random(tokens * kvHeads * D), q = random(qHeads * D);
    kv.append(slot, tokens);
    kv.flush();
    kv.selectSequence(slot);
    step.set(tokens);
    gpu.device.queue.writeBuffer(kBuf, 0, k);
    gpu.device.queue.writeBuffer(vBuf, 0, v);
    gpu.device.queue.writeBuffer(qBuf, 0, q);
    gpu.device.queue.writeBuffer(outBuf, 0, new Float32Array(qHeads * D).fill(NaN));
    gpu.device.queue.writeBuffer(nanBuf, 0, new Float32Array(qHeads * D).fill(NaN));
    let encoder = gpu.device.createCommandEncoder();
    let pass = encoder.beginComputePass();
    append.encode(pass);
    pass.end();
    gpu.device.queue.submit([encoder.finish()]);
    for (let h = 0; h < kvHeads; h++) {
      if (c.cuts && c.cuts[h] !== undefined) kv.truncateHead(slot, 0, h, c.cuts[h]);
    }
    kv.flush();

    gpu.device.pushErrorScope("validation");
    const int8Out = c.int8Out ? createChainedInt8(gpu, "att int8", qHeads * D, 1) : undefined;
    const decode = createFlashDecode(gpu, {
      label: "decode",
      kv,
      layer: 0,
      qHeads,
      q: qBuf,
      out: outBuf,
      splits,
      tileSteps: c.tileSteps,
      keyLanes: c.keyLanes,
      subgroups: c.subgroups,
      rotateTiles: c.rotateTiles,
      fusedReduce: c.fusedReduce,
      arrivals,
      int8Out,
      ...(c.direct ? { step, directKeys: tokens, directKeyLanes: c.directKeyLanes } : {}),
      ...(c.uniformRows ? { step, uniformRows: true } : {}),
    });
    step.set(1, tokens - 1);
    encoder = gpu.device.createCommandEncoder();
    pass = encoder.beginComputePass();
    decode.encode(pass);
    pass.end();
    encoder.copyBufferToBuffer(nanBuf, 0, outBuf, 0, qHeads * D * 4);
    pass = encoder.beginComputePass();
    decode.encode(pass);
    pass.end();
    gpu.device.queue.submit([encoder.finish()]);
    const error = await gpu.device.popErrorScope();
    ok(error === null, error?.message);
    const got = await gpu.readF32(outBuf, 0, qHeads * D);
    const counts = await gpu.readU32(arrivals, 0, arrivalBytes / 4);
    ok(counts.every((n) => n === 0), `${JSON.stringify(c)}: arrival counters left at ${counts}`);

    const want = new Float32Array(qHeads * D);
    for (let hq = 0; hq < qHeads; hq++) {
      const h = Math.floor(hq / group);
      const len = kv.length(slot, 0, h);
      const keys = new Float32Array(len * D), values = new Float32Array(len * D);
      for (let t = 0; t < len; t++) {
        for (let d = 0; d < D; d++) {
          keys[t * D + d] = Math.f16round(k[(t * kvHeads + h) * D + d]);
          values[t * D + d] = Math.f16round(v[(t * kvHeads + h) * D + d]);
        }
      }
      if (len === 0) continue; // an empty row attends to nothing: the kernel writes zeros
      attendOne(want, q, keys, values, len, D, D, 0, 1 / Math.sqrt(D), hq * D, hq * D);
    }
    for (let i = 0; i < want.length; i++) {
      const err = Math.abs(got[i] - want[i]);
      ok(
        err <= 1e-4 + 1e-4 * Math.abs(want[i]),
        `${JSON.stringify(c)}: out[${i}] = ${got[i]}, want ${want[i]}`,
      );
    }
    if (int8Out) {
      // The blocks hold the outputs as the next product's int8 input sees them.
      const words = await gpu.readU32(int8Out.blocks, 0, qHeads * D / 4);
      const scales = await gpu.readF32(int8Out.scales, 0, qHeads * D / 8);
      const wantQ = int8InputReference(got, qHeads * D);
      const bytes = new Int8Array(words.buffer, words.byteOffset, qHeads * D);
      for (let i = 0; i < qHeads * D; i++) {
        const value = scales[2 * Math.floor(i / 16)] * bytes[i];
        ok(
          Math.abs(value - wantQ[i]) <= 1e-6 * (Math.abs(wantQ[i]) + 1e-6),
          `${JSON.stringify(c)}: int8 out[${i}] = ${value}, want ${wantQ[i]}`,
        );
      }
    }
    for (const b of [kBuf, vBuf, qBuf, outBuf, arrivals, nanBuf]) b.destroy();
  } finally {
    kv.destroy();
  }
}

Deno.test("flash decode: head_dim 24 (3 lanes per row), G 5 (two head batches), several tiles per split", async () => {
  await checkDecode({ headDim: 24, kvHeads: 1, group: 5, tokens: 300, splits: 2 });
});

Deno.test("flash decode: head_dim 256, G 8, one step per tile, ragged rows", async () => {
  await checkDecode({
    headDim: 256,
    kvHeads: 2,
    group: 8,
    tokens: 70,
    cuts: [70, 33],
    splits: 3,
    tileSteps: 1,
  });
});

Deno.test("flash decode: head_dim 8, G 1, 8 steps per tile, more splits than pages, an empty row", async () => {
  await checkDecode({
    headDim: 8,
    kvHeads: 3,
    group: 1,
    tokens: 600,
    cuts: [600, 1, 0],
    splits: 7,
    tileSteps: 8,
  });
  await checkDecode({ headDim: 8, kvHeads: 2, group: 3, tokens: 40, cuts: [17, 40], splits: 40 });
  await checkDecode({ headDim: 8, kvHeads: 1, group: 2, tokens: 4200, splits: 300 }); // the reduce loops over 263 splits
});

Deno.test("flash decode: head_dim 64, G 4, 2 steps per tile, rows ending on and after a tile boundary, unrotated", async () => {
  await checkDecode({
    headDim: 64,
    kvHeads: 3,
    group: 4,
    tokens: 129,
    cuts: [128, 129, 64],
    splits: 1,
    tileSteps: 2,
    rotateTiles: false,
  });
});

Deno.test("flash decode: Llama shape (head_dim 128, G 4), 700 keys in 3 splits; 1120 keys in 70 splits", async () => {
  await checkDecode({ headDim: 128, kvHeads: 2, group: 4, tokens: 700, cuts: [700, 650], splits: 3 });
  // Very uneven heads (900, 0, 1 and 333 keys) share 5 · 4 slots by their pages: 13, 0, 1 and 6.
  await checkDecode({ headDim: 32, kvHeads: 4, group: 2, tokens: 900, cuts: [900, 0, 1, 333], splits: 5 });
  // 70 splits: the reduce takes 8 rows × 4 splits per pass, so it loops three times with a ragged end.
  await checkDecode({ headDim: 128, kvHeads: 1, group: 4, tokens: 1120, splits: 70 });
});

Deno.test("flash decode: the separate reduce pass (fusedReduce false) on the split cases above", async () => {
  const cases: Case[] = [
    { headDim: 24, kvHeads: 1, group: 5, tokens: 300, splits: 2 },
    { headDim: 8, kvHeads: 3, group: 1, tokens: 600, cuts: [600, 1, 0], splits: 7, tileSteps: 8 },
    { headDim: 32, kvHeads: 4, group: 2, tokens: 900, cuts: [900, 0, 1, 333], splits: 5 },
    { headDim: 128, kvHeads: 1, group: 4, tokens: 1120, splits: 70 },
  ];
  for (const c of cases) await checkDecode({ ...c, fusedReduce: false });
});

Deno.test("flash decode: the fused reduce with every head empty writes zeros and leaves the counters at zero", async () => {
  const empty: Case = { headDim: 64, kvHeads: 2, group: 4, tokens: 20, cuts: [0, 0], splits: 4 };
  await checkDecode(empty);
  await checkDecode({ ...empty, fusedReduce: false });
});

Deno.test("flash decode: direct mode (one dispatch, one workgroup per KV head and head batch)", async () => {
  // Several tiles and two head batches; ragged rows with an empty one; Llama's head_dim and group.
  const cases: Case[] = [
    { headDim: 24, kvHeads: 1, group: 5, tokens: 300, splits: 2 },
    { headDim: 32, kvHeads: 4, group: 2, tokens: 333, cuts: [333, 0, 1, 17], splits: 5 },
    { headDim: 128, kvHeads: 2, group: 4, tokens: 257, cuts: [257, 200], splits: 3 },
  ];
  for (const c of cases) await checkDecode({ ...c, direct: true });
});

Deno.test("flash decode: other key lane counts (8 and 12 lanes; split and direct)", async () => {
  const cases: Case[] = [
    { headDim: 128, kvHeads: 2, group: 4, tokens: 700, cuts: [700, 333], splits: 5, keyLanes: 8 },
    { headDim: 64, kvHeads: 1, group: 3, tokens: 500, splits: 3, keyLanes: 12, tileSteps: 3 },
    {
      headDim: 64,
      kvHeads: 2,
      group: 4,
      tokens: 260,
      cuts: [260, 9],
      splits: 2,
      keyLanes: 8,
      tileSteps: 8,
      direct: true,
    },
  ];
  for (const c of cases) await checkDecode(c);
});

Deno.test("flash decode: subgroup operations (scores in registers, lanes merged by shuffles), split and direct", async () => {
  const gpu = await getGpu();
  // head_dim / 8 a power of two: 1, 2, 4, 8 and 16 threads per key.
  const cases: Case[] = [
    { headDim: 128, kvHeads: 2, group: 4, tokens: 700, cuts: [700, 650], splits: 3 },
    { headDim: 64, kvHeads: 2, group: 4, tokens: 333, cuts: [333, 20], splits: 5, direct: true },
    { headDim: 8, kvHeads: 3, group: 1, tokens: 600, cuts: [600, 1, 0], splits: 7, tileSteps: 8 },
    { headDim: 64, kvHeads: 2, group: 4, tokens: 20, cuts: [0, 0], splits: 4 },
    { headDim: 64, kvHeads: 1, group: 4, tokens: 500, splits: 3, keyLanes: 12 }, // 3 subgroups of 4 lanes
  ];
  // The GPU's subgroup shuffles where it has them (and subgroups as wide as a key's threads), else the
  // same sums through workgroup memory: the path around them is the same.
  for (const c of cases) await checkDecode({ ...c, subgroups: subgroupsOrEmulated(gpu, c.headDim / 8) });
});

Deno.test("flash decode: direct mode with its own key lanes (1, 2, 8), subgroups", async () => {
  const gpu = await getGpu();
  const cases: Case[] = [
    { headDim: 64, kvHeads: 2, group: 4, tokens: 1, splits: 4, direct: true, directKeyLanes: 1 },
    {
      headDim: 64,
      kvHeads: 2,
      group: 4,
      tokens: 37,
      cuts: [37, 5],
      splits: 4,
      direct: true,
      directKeyLanes: 2,
    },
    { headDim: 128, kvHeads: 1, group: 4, tokens: 300, splits: 3, direct: true, directKeyLanes: 8 },
    // 4 lanes of 8 threads: one subgroup of 32, merged by shuffles alone.
    {
      headDim: 64,
      kvHeads: 2,
      group: 4,
      tokens: 70,
      splits: 4,
      direct: true,
      directKeyLanes: 4,
      subgroups: subgroupsOrEmulated(gpu, 8),
    },
  ];
  for (const c of cases) await checkDecode(c);
});

Deno.test("flash decode: several tiles per split, wrapping around from the rotated start", async () => {
  const gpu = await getGpu();
  const cases: Case[] = [
    // Rows ending inside a tile.
    { headDim: 128, kvHeads: 2, group: 4, tokens: 1120, cuts: [1120, 700], splits: 3, tileSteps: 2 },
    { headDim: 64, kvHeads: 2, group: 4, tokens: 900, cuts: [900, 1], splits: 2, tileSteps: 1, keyLanes: 8 },
    {
      headDim: 32,
      kvHeads: 3,
      group: 2,
      tokens: 333,
      cuts: [333, 0, 17],
      splits: 1,
      direct: true,
      tileSteps: 1,
    },
    {
      headDim: 64,
      kvHeads: 2,
      group: 4,
      tokens: 700,
      splits: 2,
      tileSteps: 2,
      subgroups: subgroupsOrEmulated(gpu, 8),
    },
  ];
  for (const c of cases) await checkDecode(c);
});

Deno.test("flash decode: rows of one length planned from the position (uniformRows), split and direct", async () => {
  const cases: Case[] = [
    { headDim: 128, kvHeads: 8, group: 4, tokens: 700, splits: 3 }, // slots 24 over 8 heads
    { headDim: 64, kvHeads: 3, group: 4, tokens: 1120, splits: 7 }, // 21 slots: uneven shares
    { headDim: 64, kvHeads: 2, group: 4, tokens: 33, splits: 32 }, // more slots than pages
    { headDim: 32, kvHeads: 4, group: 2, tokens: 1, splits: 2 }, // one key
    { headDim: 64, kvHeads: 2, group: 4, tokens: 300, splits: 4, direct: true },
  ];
  for (const c of cases) await checkDecode({ ...c, uniformRows: true });
});

Deno.test("flash decode: subgroups is refused by name where the GPU cannot take it", async () => {
  const gpu = await getGpu();
  const kv = await KvCache.create(gpu, {
    layers: 1,
    kvHeads: 1,
    headDim: 24,
    maxTokensPerHead: 32,
    pages: 2,
  });
  const qHeads = 1;
  const q = gpu.buffer("q", qHeads * 24 * 4), out = gpu.buffer("out", qHeads * 24 * 4);
  // head_dim 24: 3 threads per key, not a power of two; on a GPU without subgroups any head_dim.
  throws(
    () => createFlashDecode(gpu, { label: "att", kv, layer: 0, qHeads, q, out, subgroups: true }),
    /^BadFlagError: att: subgroup operations need /,
  );
  kv.destroy();
});

Deno.test("flash decode: tileSteps must be an integer from 1 to 8, keyLanes within the workgroup", async () => {
  const gpu = await getGpu();
  const kv = await KvCache.create(gpu, {
    layers: 1,
    kvHeads: 1,
    headDim: 64,
    maxTokensPerHead: 16,
    pages: 2,
  });
  const common = {
    label: "decode",
    kv,
    layer: 0,
    qHeads: 1,
    q: gpu.buffer("q", 256),
    out: gpu.buffer("o", 256),
  };
  throws(() => createFlashDecode(gpu, { ...common, tileSteps: 0 }), BadFlagError);
  throws(() => createFlashDecode(gpu, { ...common, tileSteps: 1.5 }), BadFlagError);
  throws(() => createFlashDecode(gpu, { ...common, tileSteps: 9 }), BadFlagError);
  // At least 8 key lanes (the split merge's threads), at most the workgroup's threads.
  throws(() => createFlashDecode(gpu, { ...common, keyLanes: 4 }), BadFlagError);
  throws(() => createFlashDecode(gpu, { ...common, keyLanes: 1024 }), BadFlagError);
  // The direct mode's own lanes: at least 1.
  const step = new StepParams(gpu, 1);
  throws(() => createFlashDecode(gpu, { ...common, step, directKeyLanes: 0 }), /directKeyLanes/);
  throws(() => createFlashDecode(gpu, { ...common, uniformRows: true }), /uniformRows needs the step/);
  // The benchmark's ablations take one of three names.
  throws(() => createFlashDecode(gpu, { ...common, ablate: "merge" as "lanes" }), BadFlagError);
  kv.destroy();
});

Deno.test("flash decode: the outputs also as the output projection's int8 input (int8Out), split, reduce and direct", async () => {
  // Two head batches, an empty row (its heads' zeros), the merge in the last arrival, in a reduce pass, and
  // the direct mode.
  const split: Case = { headDim: 32, kvHeads: 4, group: 2, tokens: 333, cuts: [333, 0, 1, 17], splits: 5 };
  const cases: Case[] = [
    split,
    { ...split, fusedReduce: false },
    { ...split, direct: true },
    { headDim: 16, kvHeads: 1, group: 5, tokens: 300, splits: 2 },
  ];
  for (const c of cases) await checkDecode({ ...c, int8Out: true });
});

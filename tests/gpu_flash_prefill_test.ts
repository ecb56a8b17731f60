import { equal, throws } from "node:assert/strict";
import { BadFlagError, UnsupportedError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import { createFlashPrefill, prefillPartialsBytes, type PrefillTileShape } from "../src/gpu/ops/attention.ts";
import { createKvAppend } from "../src/gpu/ops/kv_append.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { createWgkvAppend } from "../src/gpu/ops/wgkv_append.ts";
import { createWgkvPromote } from "../src/gpu/ops/wgkv_promote.ts";
import { gateOutputBytes } from "../src/gpu/ops/write_gate.ts";
import { DualCache } from "../src/kv/dual_cache.ts";
import { KvCache } from "../src/kv/kv_cache.ts";
import { admitsByRule, type WindowedPolicy } from "../src/kv/wgkv_policy.ts";
import { attendedPositions, type MaskPolicy } from "../src/kv/wgkv_reference.ts";
import { attendOne } from "../src/model/ops.ts";
import { expectClose, randomF32, subgroupsOrEmulated, submitValidated } from "./gpu_ops_helpers.ts";

/** Fresh random values in (−2, 2), never zero, in an ArrayBuffer-backed array. */
const random = (n: number): Float32Array<ArrayBuffer> => new Float32Array(randomF32(n, 2));

interface Case {
  headDim: number;
  kvHeads: number;
  group: number;
  /** Prefill chunk sizes, run one after another on one sequence. */
  chunks: number[];
  tiling?: PrefillTileShape;
  /** Key splits per KV head (createFlashPrefill's `splits`). */
  splits?: number;
  /** The rows' maxima by subgroup shuffles (or their emulation). */
  subgroups?: boolean | "emulated";
  /** Queries and probabilities staged as f16 (then compared within 3e-3 instead of 1e-4). */
  halfStaging?: boolean;
}

/** Tolerance of the outputs, absolute and relative: f16 staging rounds the queries and probabilities. */
const tolerance = (halfStaging?: boolean) => halfStaging ? 3e-3 : 1e-4;

/**
 * Prefills `chunks` through the cache of one layer with the given tiling and compares every output with
 * dense causal attention over the f16-rounded keys and values.
 */
async function checkPrefill(c: Case): Promise<void> {
  const gpu = await getGpu();
  const { headDim: D, kvHeads, group } = c;
  const qHeads = kvHeads * group;
  const maxTokens = Math.max(...c.chunks);
  const total = c.chunks.reduce((a, b) => a + b, 0);
  const kv = await KvCache.create(gpu, {
    layers: 1,
    kvHeads,
    headDim: D,
    maxTokensPerHead: total,
    pages: kvHeads * Math.ceil(total / 16) + 9,
    maxShardBytes: 5 * 64 * D,
  });
  const junk = kv.pool.allocate(9); // the sequence's pages start past a gap, out of order
  kv.pool.release(junk.filter((_, i) => i % 2 === 0));
  const step = new StepParams(gpu, maxTokens);
  const kBuf = gpu.buffer("k", maxTokens * kvHeads * D * 4);
  const vBuf = gpu.buffer("v", maxTokens * kvHeads * D * 4);
  const qBuf = gpu.buffer("q", maxTokens * qHeads * D * 4);
  const outBuf = gpu.buffer("out", maxTokens * qHeads * D * 4);
  const append = createKvAppend(gpu, { label: "append", kv, layer: 0, maxTokens, k: kBuf, v: vBuf, step });
  const splits = c.splits ?? 1;
  const partials = gpu.buffer("partials", prefillPartialsBytes(splits, maxTokens, qHeads, D));
  const attention = createFlashPrefill(gpu, {
    label: "prefill",
    kv,
    layer: 0,
    qHeads,
    q: qBuf,
    out: outBuf,
    maxTokens,
    step,
    tiling: c.tiling,
    splits,
    partials,
    subgroups: c.subgroups,
    halfStaging: c.halfStaging,
  });
  const keys = Array.from({ length: kvHeads }, () => [] as number[]);
  const values = Array.from({ length: kvHeads }, () => [] as number[]);
  const slot = kv.openSequence();
  for (const m of c.chunks) {
    kv.append(slot, m);
    kv.flush();
    kv.selectSequence(slot);
    step.set(m);
    const k = random(m * kvHeads * D), v = random(m * kvHeads * D);
    const q = random(m * qHeads * D);
    gpu.device.queue.writeBuffer(kBuf, 0, k);
    gpu.device.queue.writeBuffer(vBuf, 0, v);
    gpu.device.queue.writeBuffer(qBuf, 0, q);
    gpu.device.queue.writeBuffer(outBuf, 0, new Float32Array(outBuf.size / 4).fill(NaN));
    await submitValidated(gpu, [append, attention]);
    for (let t = 0; t < m; t++) {
      for (let h = 0; h < kvHeads; h++) {
        for (let d = 0; d < D; d++) {
          keys[h].push(Math.f16round(k[(t * kvHeads + h) * D + d]));
          values[h].push(Math.f16round(v[(t * kvHeads + h) * D + d]));
        }
      }
    }
    const got = await gpu.readF32(outBuf, 0, m * qHeads * D);
    const want = new Float32Array(m * qHeads * D);
    const len = keys[0].length / D;
    for (let h = 0; h < kvHeads; h++) {
      const hk = Float32Array.from(keys[h]), hv = Float32Array.from(values[h]);
      for (let t = 0; t < m; t++) {
        for (let g = 0; g < group; g++) {
          const o = (t * qHeads + h * group + g) * D;
          attendOne(want, q, hk, hv, len - m + t + 1, D, D, 0, 1 / Math.sqrt(D), o, o);
        }
      }
    }
    const tiling = c.tiling ? `${c.tiling.rows}×${c.tiling.keys}` : "default";
    const tol = tolerance(c.halfStaging);
    expectClose(`D ${D} G ${group} tiling ${tiling} chunk ${m} at ${len - m}`, got, want, tol, tol);
    if (splits > 1) {
      // The last token of the chunk sees every key: its keys were really dealt out among KV head 0's
      // slots (the first `splits`, all heads being equally long), each holding some weight.
      const keyTiles = Math.ceil(len / (c.tiling?.keys ?? 16));
      const stats = await gpu.readF32(partials, splits * kvHeads * maxTokens * group * D * 4);
      let weighted = 0;
      for (let s = 0; s < splits; s++) {
        if (stats[2 * ((s * maxTokens + m - 1) * group) + 1] > 0) weighted++;
      }
      equal(weighted, Math.min(splits, keyTiles), `slots of head 0 with weight, chunk ${m}`);
    }
  }
  kv.destroy();
}

Deno.test("flash prefill: head_dim 128, G 4, default tiling, chunks 40 and 70 over several key tiles", async () => {
  await checkPrefill({ headDim: 128, kvHeads: 2, group: 4, chunks: [40, 70] });
});

Deno.test("flash prefill: G 3 (rows not a multiple of the group), 16 rows × 32 keys, chunks 23, 1, 30", async () => {
  await checkPrefill({
    headDim: 32,
    kvHeads: 2,
    group: 3,
    chunks: [23, 1, 30],
    tiling: { rows: 16, keys: 32 },
  });
});

Deno.test("flash prefill: G 8, 64 rows × 16 keys; G 1, 16 rows × 64 keys; G 2, 32 rows × 48 keys", async () => {
  await checkPrefill({ headDim: 16, kvHeads: 1, group: 8, chunks: [19, 45], tiling: { rows: 64, keys: 16 } });
  await checkPrefill({ headDim: 64, kvHeads: 3, group: 1, chunks: [50, 17], tiling: { rows: 16, keys: 64 } });
  await checkPrefill({ headDim: 24, kvHeads: 2, group: 2, chunks: [33, 60], tiling: { rows: 32, keys: 48 } });
});

Deno.test("flash prefill: more shapes: G 4 64 × 16, G 3 32 × 32, G 8 16 × 64, G 1 and G 4 64 × 48", async () => {
  const tiling = (rows: number, keys: number) => ({ rows, keys });
  await checkPrefill({ headDim: 40, kvHeads: 2, group: 4, chunks: [37, 50], tiling: tiling(64, 16) });
  await checkPrefill({ headDim: 32, kvHeads: 1, group: 3, chunks: [29, 1, 40], tiling: tiling(32, 32) });
  await checkPrefill({ headDim: 16, kvHeads: 2, group: 8, chunks: [11, 30], tiling: tiling(16, 64) });
  await checkPrefill({ headDim: 8, kvHeads: 1, group: 1, chunks: [70, 9], tiling: tiling(64, 48) });
  // The default where it fits (head_dim 64 on an H100), at a group of 4 and a smaller head.
  await checkPrefill({ headDim: 32, kvHeads: 2, group: 4, chunks: [45, 70], tiling: tiling(64, 48) });
});

Deno.test("flash prefill: a bad tiling, a group larger than the tile or too much workgroup memory is refused", async () => {
  const gpu = await getGpu();
  const kv = await KvCache.create(gpu, { layers: 1, kvHeads: 1, headDim: 256, maxTokensPerHead: 32 });
  const step = new StepParams(gpu, 4);
  const buffer = gpu.buffer("q", 4 * 8 * 256 * 4);
  const options = { label: "prefill", kv, layer: 0, qHeads: 8, q: buffer, out: buffer, maxTokens: 4, step };
  throws(() => createFlashPrefill(gpu, { ...options, tiling: { rows: 24, keys: 32 } }), BadFlagError);
  throws(() => createFlashPrefill(gpu, { ...options, tiling: { rows: 32, keys: 24 } }), BadFlagError);
  throws(
    () => createFlashPrefill(gpu, { ...options, qHeads: 32, tiling: { rows: 16, keys: 16 } }),
    BadFlagError,
  );
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  if (limit < 64 * 256 * 4 * 2) {
    throws(() => createFlashPrefill(gpu, { ...options, tiling: { rows: 64, keys: 64 } }), UnsupportedError);
  }
  kv.destroy();
});

/**
 * WG-KV mode with several ring tiles (small key tiles, a ring of 64 slots): chunks after the ring wraps
 * leave whole ring tiles in the future or expired for a query tile, which the kernel skips.
 */
async function checkWgkvPrefill(
  policy: WindowedPolicy,
  chunks: number[],
  tiling: PrefillTileShape,
  splits = 1,
  subgroups: boolean | "emulated" = false,
  halfStaging = false,
) {
  const gpu = await getGpu();
  const D = 16, H = 2, group = 2, qHeads = H * group, maxBatch = 40;
  const kv = await DualCache.create(gpu, {
    layers: 1,
    kvHeads: H,
    headDim: D,
    policy,
    maxBatch,
    maxGlobalTokens: 160,
    pages: 120,
  });
  const step = new StepParams(gpu, maxBatch);
  const gateFlags = gpu.buffer("gate flags", gateOutputBytes(maxBatch, 1, H));
  const kBuf = gpu.buffer("k", maxBatch * H * D * 4), vBuf = gpu.buffer("v", maxBatch * H * D * 4);
  const qBuf = gpu.buffer("q", maxBatch * qHeads * D * 4),
    outBuf = gpu.buffer("out", maxBatch * qHeads * D * 4);
  const promote = createWgkvPromote(gpu, { label: "promote", kv, maxTokens: maxBatch });
  const append = createWgkvAppend(gpu, {
    label: "append",
    kv,
    layer: 0,
    maxTokens: maxBatch,
    k: kBuf,
    v: vBuf,
    gateFlags,
    step,
  });
  const attention = createFlashPrefill(gpu, {
    label: "prefill",
    kv,
    layer: 0,
    qHeads,
    q: qBuf,
    out: outBuf,
    maxTokens: maxBatch,
    step,
    wgkv: kv,
    tiling,
    splits,
    subgroups,
    halfStaging,
  });
  const keys = Array.from({ length: H }, () => [] as number[]);
  const values = Array.from({ length: H }, () => [] as number[]);
  const flags = Array.from({ length: H }, () => [] as number[]);
  const slot = kv.openSequence();
  for (const m of chunks) {
    const pos0 = kv.tokens(slot);
    kv.beginStep(slot, m, pos0);
    step.set(m, pos0);
    const k = random(m * H * D), v = random(m * H * D), q = random(m * qHeads * D);
    gpu.device.queue.writeBuffer(gateFlags, 0, new Uint32Array(m * H));
    gpu.device.queue.writeBuffer(kBuf, 0, k);
    gpu.device.queue.writeBuffer(vBuf, 0, v);
    gpu.device.queue.writeBuffer(qBuf, 0, q);
    gpu.device.queue.writeBuffer(outBuf, 0, new Float32Array(outBuf.size / 4).fill(NaN));
    await submitValidated(gpu, [promote, append, attention]);
    kv.endStep(slot);
    for (let t = 0; t < m; t++) {
      for (let h = 0; h < H; h++) {
        for (let d = 0; d < D; d++) {
          keys[h].push(Math.f16round(k[(t * H + h) * D + d]));
          values[h].push(Math.f16round(v[(t * H + h) * D + d]));
        }
        flags[h].push(admitsByRule(policy, 0, h, pos0 + t) ? 1 : 0);
      }
    }
    const got = await gpu.readF32(outBuf, 0, m * qHeads * D);
    const want = new Float32Array(m * qHeads * D);
    for (let h = 0; h < H; h++) {
      const mask: MaskPolicy = {
        kind: "wgkv",
        window: policy.window,
        flags: Uint8Array.from(flags[h]),
        length: flags[h].length,
      };
      for (let t = 0; t < m; t++) {
        const seen = attendedPositions(mask, 0, pos0 + t);
        const hk = new Float32Array(seen.length * D), hv = new Float32Array(seen.length * D);
        seen.forEach((p, i) => {
          hk.set(keys[h].slice(p * D, p * D + D), i * D);
          hv.set(values[h].slice(p * D, p * D + D), i * D);
        });
        for (let g = 0; g < group; g++) {
          const o = (t * qHeads + h * group + g) * D;
          attendOne(want, q, hk, hv, seen.length, D, D, 0, 1 / Math.sqrt(D), o, o);
        }
      }
    }
    const tol = tolerance(halfStaging);
    expectClose(`${policy.kind} splits ${splits} chunk ${m} at ${pos0}`, got, want, tol, tol);
  }
  equal(kv.ringTokens, 64);
  kv.destroy();
}

Deno.test("flash prefill: WG-KV ring of 4 tiles (window and random policies), chunks after the ring wraps", async () => {
  const chunks = [40, 30, 5, 1, 33, 40];
  await checkWgkvPrefill({ kind: "window", window: 16 }, chunks, { rows: 16, keys: 16 });
  await checkWgkvPrefill({ kind: "random", window: 25, rate: 0.15, seed: 7 }, chunks, { rows: 16, keys: 16 });
  await checkWgkvPrefill({ kind: "random", window: 16, rate: 0.3, seed: 3 }, chunks, {
    rows: 32,
    keys: 48,
  });
});

Deno.test("flash prefill: key splits (3 and 2 per KV head, more splits than key tiles early on) match dense attention", async () => {
  await checkPrefill({
    headDim: 32,
    kvHeads: 3,
    group: 2,
    chunks: [5, 37, 50, 9],
    tiling: { rows: 16, keys: 16 },
    splits: 3,
  });
  await checkPrefill({
    headDim: 24,
    kvHeads: 1,
    group: 4,
    chunks: [70, 1, 33],
    tiling: { rows: 64, keys: 16 },
    splits: 2,
  });
});

Deno.test("flash prefill: WG-KV with key splits shared out by head length (window and random policies)", async () => {
  const chunks = [40, 30, 5, 1, 33, 40];
  await checkWgkvPrefill({ kind: "window", window: 16 }, chunks, { rows: 16, keys: 16 }, 3);
  await checkWgkvPrefill(
    { kind: "random", window: 25, rate: 0.15, seed: 7 },
    chunks,
    { rows: 16, keys: 16 },
    4,
  );
});

/**
 * The kernel options that change how every tile is computed (subgroup row maxima, f16 staging), checked
 * over one set of shapes: the default tiling, odd tilings and head sizes (G 3), key splits and WG-KV.
 */
async function checkTileOptions(options: { subgroups?: boolean | "emulated"; halfStaging?: boolean }) {
  await checkPrefill({ headDim: 64, kvHeads: 2, group: 4, chunks: [40, 70], ...options });
  await checkPrefill({
    headDim: 32,
    kvHeads: 2,
    group: 3,
    chunks: [23, 1, 30],
    tiling: { rows: 16, keys: 32 },
    ...options,
  });
  await checkPrefill({
    headDim: 40,
    kvHeads: 2,
    group: 3,
    chunks: [23, 1, 30],
    tiling: { rows: 32, keys: 48 },
    splits: 3,
    ...options,
  });
  for (const splits of [1, 2]) {
    await checkPrefill({
      headDim: 24,
      kvHeads: 1,
      group: 4,
      chunks: [70, 1, 33],
      tiling: { rows: 64, keys: 16 },
      splits,
      ...options,
    });
  }
  const policy = { kind: "random", window: 25, rate: 0.15, seed: 7 } as const;
  const chunks = [40, 30, 5, 1, 33, 40];
  await checkWgkvPrefill(policy, chunks, { rows: 16, keys: 16 }, 3, options.subgroups, options.halfStaging);
}

Deno.test("flash prefill: the rows' maxima by subgroup shuffles (subgroups), plain, split and WG-KV", async () => {
  // The GPU's shuffles where its subgroups hold a row quad's 8 lanes, else the emulation.
  await checkTileOptions({ subgroups: subgroupsOrEmulated(await getGpu(), 8) });
});

Deno.test("flash prefill: queries and probabilities staged as f16 (halfStaging), plain, split and WG-KV", async () => {
  await checkTileOptions({ halfStaging: true });
  // head_dim 128 with the default tiling, which grows with the smaller staging where the GPU allows.
  await checkPrefill({ headDim: 128, kvHeads: 2, group: 4, chunks: [40, 70], halfStaging: true });
});

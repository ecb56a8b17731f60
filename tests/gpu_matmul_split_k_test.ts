import { equal, ok, throws } from "node:assert/strict";
import { BadFlagError } from "../src/errors.ts";
import { getGpu } from "../src/gpu/device.ts";
import {
  createMatmul,
  prefillKSplits,
  SPLIT_K_SKEW,
  SplitKMatmulOp,
  splitKOutputFloats,
} from "../src/gpu/ops/matmul.ts";
import { StepParams } from "../src/gpu/ops/op.ts";
import { compareLinear, randomWeight } from "./gpu_quant_data.ts";
import { nanBuffer, productCase, runOps } from "./gpu_ops_helpers.ts";

Deno.test("prefill split K: the rule doubles while tiles are few, the parts fit and ranges keep 256 columns", () => {
  // 16 row tiles × 4 token tiles of 128 = 64 tiles: 4 splits (256 workgroups).
  equal(prefillKSplits(16, 128, 8192, 2048, 4, 512), 4);
  equal(prefillKSplits(16, 128, 8192, 2048, 8, 512), 4); // 256 reached
  equal(prefillKSplits(16, 128, 8192, 2048, 2, 512), 2); // the most allowed
  equal(prefillKSplits(16, 128, 8192, 2048, 4, 2048), 1); // 256 tiles already
  equal(prefillKSplits(16, 128, 8192, 1024, 4, 512), 2); // output room for 2 parts of 512 tokens
  equal(prefillKSplits(16, 128, 512, 2048, 4, 512), 2); // 256 columns per range at least
  equal(prefillKSplits(1, 64, 2048, 64, 8, 7), 8);
  // Another target: 512 workgroups take 8 splits of the 64 tiles, 128 only 2; 4096 columns stop at 16.
  equal(prefillKSplits(16, 128, 8192, 16384, 16, 512, 512), 8);
  equal(prefillKSplits(16, 128, 8192, 16384, 16, 512, 128), 2);
  equal(prefillKSplits(1, 128, 4096, 1 << 20, 64, 512, 1 << 20), 16);
});

Deno.test("gpu matmul: split-K parts add up to the product, every element of each part written", async () => {
  const gpu = await getGpu();
  const cases: {
    type: string;
    rows: number;
    cols: number;
    m: number;
    maxTokens: number;
    maxSplits?: number;
    workgroups?: number;
  }[] = [
    { type: "F16", rows: 33, cols: 1024, m: 5, maxTokens: 21 }, // 4 splits of 256
    // 8 splits of 256, aiming for more workgroups than the default.
    { type: "F16", rows: 33, cols: 2048, m: 5, maxTokens: 21, maxSplits: 8, workgroups: 4096 },
    { type: "Q4_K", rows: 7, cols: 2304, m: 3, maxTokens: 13 }, // 4 splits of 576 (ranges inside blocks)
    { type: "Q8_0", rows: 129, cols: 1056, m: 17, maxTokens: 40 }, // 4 splits of 264 (272, 272, 272, 240)
    { type: "F32", rows: 19, cols: 520, m: 2, maxTokens: 9 }, // 2 splits, the last range ragged
  ];
  for (const c of cases) {
    const { weight, w, x, xBuf, step } = productCase(gpu, c, c.maxTokens);
    const maxSplits = c.maxSplits ?? 4;
    const yFloats = splitKOutputFloats(maxSplits, c.maxTokens, c.rows);
    const yBuf = nanBuffer(gpu, "y", yFloats);
    const op = createMatmul(gpu, {
      label: "mm",
      weight,
      x: xBuf,
      y: yBuf,
      maxTokens: c.maxTokens,
      step,
      maxKSplits: maxSplits,
      kSplitWorkgroups: c.workgroups,
    });
    ok(op instanceof SplitKMatmulOp);
    ok(op.splitsFor(c.m) > 1, `${c.type}: ${op.splitsFor(c.m)} splits at ${c.m} tokens`);
    for (const m of [c.m, c.maxTokens]) {
      const splits = op.splitsFor(m);
      const rowTiles = Math.ceil(c.rows / 128);
      equal(
        splits,
        prefillKSplits(rowTiles, 64, c.cols, maxSplits * c.maxTokens, maxSplits, m, c.workgroups),
      );
      if (c.workgroups) equal(splits, maxSplits);
      gpu.device.queue.writeBuffer(yBuf, 0, new Float32Array(yFloats).fill(NaN));
      const [got] = await runOps(gpu, [op], step, m, 0, [yBuf]);
      // Part s at s · (m · rows + skew); nothing is written between or past the parts.
      const total = new Float32Array(m * c.rows);
      const part = m * c.rows + SPLIT_K_SKEW;
      for (let s = 0; s < splits; s++) {
        for (let i = 0; i < m * c.rows; i++) {
          const v = got[s * part + i];
          ok(Number.isFinite(v), `${c.type} m=${m}: part ${s} element ${i} not written (${v})`);
          total[i] += v;
        }
        for (let i = m * c.rows; i < part; i++) ok(Number.isNaN(got[s * part + i]), `skew written at ${i}`);
      }
      const bad = compareLinear(total, w, x, m, c.rows, c.cols, 2e-5);
      ok(bad === undefined, `${c.type} m=${m}, ${splits} splits: ${bad}`);
      for (let i = splits * part; i < got.length; i++) {
        ok(Number.isNaN(got[i]), `written past the parts at ${i}`);
      }
    }
    weight.destroy();
    xBuf.destroy();
    yBuf.destroy();
  }
  const { weight } = randomWeight(gpu, "w", "F16", 4, 512);
  const step = new StepParams(gpu, 4);
  const buf = gpu.buffer("b", 4 * 512 * 4);
  throws(
    () => createMatmul(gpu, { label: "mm", weight, x: buf, y: buf, maxTokens: 4, step, maxKSplits: 3 }),
    (e: Error) => e instanceof BadFlagError && /mm: maxKSplits must be a power of two, got 3/.test(e.message),
  );
  weight.destroy();
});

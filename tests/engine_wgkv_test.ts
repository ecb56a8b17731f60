import { deepEqual, equal, ok } from "node:assert/strict";
import { openGGUF } from "../src/gguf/reader.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import { getGpu } from "../src/gpu/device.ts";
import { importGate } from "../src/gate/import.ts";
import type { GateWeights } from "../src/gate/format.ts";
import type { KvPolicy } from "../src/kv/wgkv_policy.ts";
import { fixture, fixtureTest } from "./fixtures.ts";
import { ReferenceModel } from "../src/model/reference.ts";
import { gateScores } from "../src/gate/reference.ts";
import { relativeError } from "./gpu_ops_helpers.ts";

const MODEL = "stories260K.gguf";
const GATE = "gate/stories260K-gate-fp32.pt";

/** Loads stories260K under `policy` and returns the logits after each prefix length in `marks`. */
async function logitsAt(
  policy: KvPolicy<GateWeights>,
  tokens: number[],
  options: { maxBatch: number; stepwise?: boolean; prefillSplits?: number },
): Promise<{ logits: Float32Array; model: GpuModel }> {
  const file = await openGGUF(fixture(MODEL));
  const model = await GpuModel.load(await getGpu(), file, hparamsFromGGUF(file), {
    contextLength: 256,
    maxBatch: options.maxBatch,
    policy,
    prefillSplits: options.prefillSplits,
  });
  let logits: Float32Array = new Float32Array(0);
  if (options.stepwise) {
    for (let i = 0; i < tokens.length; i++) logits = await model.forward([tokens[i]], i, "logits");
  } else {
    logits = await model.forward(tokens, 0, "logits");
  }
  file.close();
  return { logits, model };
}

const prompt = (
  n: number,
) => [1, ...Array.from({ length: n - 1 }, () => 3 + Math.floor(Math.random() * 500))];

fixtureTest(
  "wgkv model: a window covering the whole sequence, or admitting everything, equals the full cache",
  [MODEL],
  async () => {
    const tokens = prompt(45);
    const full = await logitsAt({ kind: "full" }, tokens, { maxBatch: 16 });
    full.model.destroy();
    for (
      const policy of [
        { kind: "window", window: 64 },
        { kind: "random", window: 16, rate: 1, seed: 7 },
        { kind: "sink", window: 16, sinks: 64 },
      ] as KvPolicy<GateWeights>[]
    ) {
      const r = await logitsAt(policy, tokens, { maxBatch: 16 });
      const err = relativeError(r.logits, full.logits);
      // The dual cache holds the same f16 keys in another order (ring, then global), so f32 sums round
      // differently; over random prompts that reaches ~2e-4 relative now and then (window: exactly 0).
      ok(err < 1e-3, `${policy.kind}: ${err}`);
      r.model.destroy();
    }
  },
);

fixtureTest(
  "wgkv model: admitting nothing equals the window policy; random/sink differ from both",
  [MODEL],
  async () => {
    const tokens = prompt(50);
    const window = await logitsAt({ kind: "window", window: 16 }, tokens, { maxBatch: 16 });
    const none = await logitsAt({ kind: "random", window: 16, rate: 0, seed: 1 }, tokens, { maxBatch: 16 });
    ok(relativeError(none.logits, window.logits) < 1e-5);
    const full = await logitsAt({ kind: "full" }, tokens, { maxBatch: 16 });
    ok(
      relativeError(window.logits, full.logits) > 1e-3,
      "a 16-token window must change the logits at position 49",
    );
    for (const m of [window, none, full]) m.model.destroy();
  },
);

fixtureTest(
  "wgkv model: decode after prefill equals prefill of the whole sequence (chunks, ring, promotion)",
  [
    MODEL,
    GATE,
  ],
  async () => {
    const file = await openGGUF(fixture(MODEL));
    const gate = await importGate(fixture(GATE), fixture(MODEL), { window: 16 });
    file.close();
    const tokens = prompt(70);
    for (
      const policy of [
        { kind: "wgkv", window: 16, threshold: 0.5, gate },
        { kind: "random", window: 16, rate: 0.3, seed: 5 },
      ] as KvPolicy<GateWeights>[]
    ) {
      const once = await logitsAt(policy, tokens, { maxBatch: 128 });
      const chunked = await logitsAt(policy, tokens, { maxBatch: 8 });
      const stepwise = await logitsAt(policy, tokens, { maxBatch: 8, stepwise: true });
      // Same admissions whichever way the tokens arrived; with the same ring, the same global tokens. (Checked
      // before the logits: a gate score within rounding of τ, admitted one way and not the other, would show
      // here first rather than as a logits difference.)
      const a = once.model.kvStats().dual!,
        b = stepwise.model.kvStats().dual!,
        c = chunked.model.kvStats().dual!;
      deepEqual(
        [...a.admittedFraction],
        [...b.admittedFraction],
        `${policy.kind}: admissions, once vs stepwise`,
      );
      deepEqual(
        [...c.globalTokens],
        [...b.globalTokens],
        `${policy.kind}: global tokens, chunked vs stepwise`,
      );
      // Keys reach attention in another order (ring slots vs global pages), so f32 sums differ slightly.
      ok(relativeError(chunked.logits, once.logits) < 5e-4, `${policy.kind} chunked`);
      ok(relativeError(stepwise.logits, once.logits) < 5e-4, `${policy.kind} stepwise`);
      ok(b.globalTokens.some((g) => g > 0), "tokens were promoted");
      ok(
        a.admittedFraction.some((f) => f > 0) && a.admittedFraction.some((f) => f < 1),
        `${policy.kind} admits some`,
      );
      for (const m of [once, chunked, stepwise]) m.model.destroy();
    }
  },
);

fixtureTest(
  "wgkv model: chained greedy decode equals step-by-step greedy decode (results read early and the spec's way)",
  [MODEL, GATE],
  async () => {
    const gate = await importGate(fixture(GATE), fixture(MODEL), { window: 16 });
    const policy: KvPolicy<GateWeights> = { kind: "wgkv", window: 16, threshold: 0.5, gate };
    const file = await openGGUF(fixture(MODEL));
    const hp = hparamsFromGGUF(file);
    const gpu = await getGpu();
    // `a` reads its tokens and gate flags back when mapAsync resolves, `b` as its default says (early on Deno
    // 2.9): the same tokens and admissions either way.
    const a = await GpuModel.load(gpu, file, hp, {
      contextLength: 256,
      maxBatch: 8,
      policy,
      readback: "wait",
    });
    const b = await GpuModel.load(gpu, file, hp, { contextLength: 256, maxBatch: 8, policy });
    const tokens = prompt(20);
    let t = await a.forward(tokens, 0, "argmax");
    const stepwise: number[] = [];
    for (let i = 0; i < 40; i++) {
      stepwise.push(t);
      if (i < 39) t = await a.forward([t], tokens.length + i, "argmax");
    }
    const first = await b.forward(tokens, 0, "argmax");
    // Chains no longer than the ring (32 tokens here): 39 steps as 32 + 7.
    equal(b.maxChain, 32);
    const part = await b.decodeGreedy(first, tokens.length, 32);
    const chained = [first, ...part, ...await b.decodeGreedy(part[31], tokens.length + 32, 7)];
    deepEqual(chained, stepwise);
    // The CPU mirror saw the same admissions (placeholders replaced by the read-back flags).
    deepEqual(
      [...b.kvStats().dual!.admittedFraction].map((f) => f.toFixed(6)),
      [
        ...a.kvStats().dual!.admittedFraction,
      ].map((f) => f.toFixed(6)),
    );
    equal(b.kvStats().tokens, tokens.length + 39);
    // A step's dispatches: the full cache's five per layer and three more (see gpu_model_defaults_test.ts),
    // plus the promotion and the two of all layers' write gates after the last layer.
    equal(b.decodeDispatches(tokens.length + 39), 1 + 5 * hp.nLayer + 2 + 1 + 2);
    a.destroy();
    b.destroy();
    file.close();
  },
);

fixtureTest(
  "wgkv model: admissions and read-back scores equal the CPU gate on the CPU reference's keys",
  [MODEL, GATE],
  async () => {
    // With a window longer than the sequence, WG-KV attends to everything, so the GPU's hidden states and
    // keys follow the full-attention CPU reference in every layer and the gate sees the same keys.
    const gate = await importGate(fixture(GATE), fixture(MODEL), {});
    const threshold = 0.6;
    const file = await openGGUF(fixture(MODEL));
    const hp = hparamsFromGGUF(file);
    const cpu = await ReferenceModel.load(file);
    const L = hp.nLayer, H = hp.nHeadKV;
    const tokens = prompt(60);
    const admitted = new Float64Array(L * H);
    // Tokens whose CPU score lies within float noise of the threshold (GPU and CPU scores agree to 1e-3
    // below): the GPU may put those on either side.
    const nearThreshold = new Float64Array(L * H);
    // The last prefill chunk (maxBatch 16: tokens 48 … 59): its scores, [token][layer][head].
    const lastChunk = tokens.length - 48;
    const lastScores = new Float32Array(lastChunk * L * H);
    cpu.keyObserver = (layer, pos, pre, post) => {
      const g = gateScores(gate, layer, pre, post, 1);
      for (let h = 0; h < H; h++) {
        if (g[h] > threshold) admitted[layer * H + h]++;
        if (Math.abs(g[h] - threshold) <= 1e-3) nearThreshold[layer * H + h]++;
      }
      if (pos >= 48) { for (let h = 0; h < H; h++) lastScores[((pos - 48) * L + layer) * H + h] = g[h]; }
    };
    for (let i = 0; i < tokens.length; i++) cpu.forward(tokens[i], i);
    const model = await GpuModel.load(await getGpu(), file, hp, {
      contextLength: 128,
      maxBatch: 16,
      policy: { kind: "wgkv", window: 128, threshold, gate },
    });
    await model.forward(tokens, 0, "logits");
    const gpuFractions = model.kvStats().dual!.admittedFraction;
    for (let r = 0; r < L * H; r++) {
      const diff = Math.abs(gpuFractions[r] * tokens.length - admitted[r]);
      ok(
        diff <= nearThreshold[r] + 1e-6,
        `layer ${Math.floor(r / H)} head ${r % H}: GPU ${gpuFractions[r] * tokens.length}, CPU ${
          admitted[r]
        } (${nearThreshold[r]} scores within 1e-3 of the threshold)`,
      );
    }
    ok(admitted.some((a) => a > 0) && admitted.some((a) => a < tokens.length), "mixed admissions");
    // The scores themselves, as read back for calibrating a threshold.
    const scores = await model.gateScores(lastChunk);
    equal(scores.length, lastScores.length);
    for (let i = 0; i < scores.length; i++) {
      ok(Math.abs(scores[i] - lastScores[i]) <= 1e-3, `score ${i}: GPU ${scores[i]}, CPU ${lastScores[i]}`);
    }
    model.destroy();
    file.close();
  },
);

fixtureTest(
  "wgkv model: prefill attention with key splits gives the logits of one workgroup per head (full and wgkv)",
  [MODEL, GATE],
  async () => {
    const gate = await importGate(fixture(GATE), fixture(MODEL), { window: 16 });
    const tokens = prompt(70);
    for (
      const policy of [
        { kind: "full" },
        { kind: "wgkv", window: 16, threshold: 0.5, gate },
      ] as KvPolicy<GateWeights>[]
    ) {
      const one = await logitsAt(policy, tokens, { maxBatch: 16 });
      const split = await logitsAt(policy, tokens, { maxBatch: 16, prefillSplits: 3 });
      const d = relativeError(split.logits, one.logits);
      // The merge adds the same terms in another order: over random prompts the relative difference is
      // heavy-tailed (5e-7 … 8e-5 in 25 prompts, 6.7e-4 once), as for the dual cache against the full one.
      ok(d < 1e-3, `${policy.kind}: logits differ by ${d}`);
      one.model.destroy();
      split.model.destroy();
    }
  },
);

fixtureTest(
  "wgkv model: the WG-KV append in the write gate, with chained gates at decode or not, and decode's gates after the last layer give the logits, admissions and chained tokens of the separate append",
  [MODEL, GATE],
  async () => {
    const gate = await importGate(fixture(GATE), fixture(MODEL), { window: 16 });
    const policy: KvPolicy<GateWeights> = { kind: "wgkv", window: 16, threshold: 0.5, gate };
    const file = await openGGUF(fixture(MODEL));
    const hp = hparamsFromGGUF(file);
    const gpu = await getGpu();
    const load = (fuseWgkvAppend: boolean, chainWriteGates = true, gatesAfterLayers = false) =>
      GpuModel.load(gpu, file, hp, {
        contextLength: 256,
        maxBatch: 8,
        policy,
        fuseWgkvAppend,
        chainWriteGates,
        gatesAfterLayers,
      });
    const fused = await load(true);
    const separate = await load(false);
    const unchained = await load(true, false);
    const afterLayers = await load(true, true, true);
    const appends = (m: GpuModel) => m.decodeLabels.filter((l) => l.endsWith("kv_append")).length;
    const gates = (m: GpuModel) => m.decodeLabels.filter((l) => /write_gates?$/.test(l));
    equal(appends(fused), 0);
    equal(appends(separate), hp.nLayer);
    equal(appends(afterLayers), 0);
    deepEqual(gates(afterLayers), ["write_gates"]);
    equal(gates(fused).length, hp.nLayer);
    const tokens = prompt(27);
    // Prefill in chunks of 8, stepwise decode, then a chain: 27 + 4 + 24 positions go around the 32-slot
    // ring, so tokens are promoted too.
    const run = async (m: GpuModel) => {
      const logits = [await m.forward(tokens, 0, "logits")];
      let next = 5;
      for (let i = 0; i < 4; i++) {
        logits.push(await m.forward([next], tokens.length + i, "logits"));
        next = 3 + (next * 31 + 7) % 400;
      }
      const chained = await m.decodeGreedy(next, tokens.length + 4, 24);
      return { logits, chained, scores: await m.gateScores(1), stats: m.kvStats().dual! };
    };
    const b = await run(separate);
    // Fused, with decode's write gates chained (each layer deciding the previous layer's flags) and not.
    for (
      const [name, model] of [["chained", fused], ["unchained", unchained], [
        "after layers",
        afterLayers,
      ]] as const
    ) {
      const a = await run(model);
      a.logits.forEach((l, i) => deepEqual(l, b.logits[i], `${name}: step ${i}: logits`));
      deepEqual(a.chained, b.chained, `${name}: chained tokens`);
      deepEqual(a.scores, b.scores, `${name}: scores`);
      deepEqual([...a.stats.admittedFraction], [...b.stats.admittedFraction], `${name}: admitted`);
      deepEqual([...a.stats.globalTokens], [...b.stats.globalTokens], `${name}: global tokens`);
      ok(a.stats.globalTokens.some((g) => g > 0), `${name}: tokens were promoted`);
    }
    for (const model of [fused, separate, unchained, afterLayers]) model.destroy();
    file.close();
  },
);

fixtureTest(
  "wgkv model: prefill progress comes after every step (its gate flags are read anyway), whatever the interval",
  [MODEL, GATE],
  async () => {
    const gate = await importGate(fixture(GATE), fixture(MODEL), {});
    const file = await openGGUF(fixture(MODEL));
    const model = await GpuModel.load(await getGpu(), file, hparamsFromGGUF(file), {
      contextLength: 128,
      maxBatch: 16,
      policy: { kind: "wgkv", window: 32, threshold: 0.5, gate },
    });
    try {
      const reports: [number, number][] = [];
      model.prefillProgressMs = 1e9;
      model.prefillProgress = (done, total) => reports.push([done, total]);
      await model.forward(prompt(50), 0, "argmax");
      deepEqual(reports, [[16, 50], [32, 50], [48, 50]]);
    } finally {
      model.destroy();
      file.close();
    }
  },
);

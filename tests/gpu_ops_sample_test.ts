import { deepEqual, equal, ok } from "node:assert/strict";
import { getGpu, type Gpu } from "../src/gpu/device.ts";
import {
  createSample,
  SAMPLE_BEYOND_CANDIDATES,
  SAMPLE_CANDIDATE_CAP,
  type SampleOp,
  type SampleSettings,
  sampleUniform,
} from "../src/gpu/ops/sample.ts";
import {
  deviceDraws,
  type ReferenceDraw,
  sampleExact,
  sampleReference,
} from "../src/gpu/ops/sample_reference.ts";
import { argmax, type Candidates, minP, repetitionPenalty, topK, topP } from "../src/engine/sampling.ts";
import { randomF32 } from "./gpu_ops_helpers.ts";

const SENTINEL = 0xdeadbeef;

/** Settings with everything off except what `s` turns on. */
function settings(s: Partial<SampleSettings>): SampleSettings {
  return {
    temperature: 1,
    topK: 0,
    topP: 1,
    minP: 0,
    repeatPenalty: 1,
    repeatLastN: 64,
    seed: Math.floor(Math.random() * 2 ** 32),
    ...s,
  };
}

/** Runs `steps` chained draws in one command buffer; returns each step's token and the state afterwards. */
async function runOp(
  gpu: Gpu,
  op: SampleOp,
  s: SampleSettings,
  history: number[],
  draw: number,
  steps: number,
): Promise<{ tokens: number[]; state: Uint32Array }> {
  const out = gpu.buffer("sampled", steps * 4, new Uint32Array(steps).fill(SENTINEL));
  gpu.device.queue.writeBuffer(op.tokens, 0, new Uint32Array([SENTINEL]));
  op.start(s, history, draw);
  const enc = gpu.device.createCommandEncoder();
  for (let i = 0; i < steps; i++) {
    const pass = enc.beginComputePass();
    op.encode(pass);
    pass.end();
    enc.copyBufferToBuffer(op.tokens, 0, out, 4 * i, 4);
  }
  gpu.device.queue.submit([enc.finish()]);
  const tokens = Array.from(await gpu.readU32(out));
  const state = await gpu.readU32(op.state);
  out.destroy();
  return { tokens, state };
}

/** The reference for the same chained steps: each draw appends its token to the history. */
function referenceChain(
  logits: Float32Array,
  s: SampleSettings,
  history: number[],
  draw: number,
  steps: number,
): ReferenceDraw[] {
  const h = [...history];
  const out: ReferenceDraw[] = [];
  for (let i = 0; i < steps; i++) {
    const r = sampleReference(logits, s, h, draw + i);
    out.push(r);
    if (!r.beyond) h.push(r.token); // a step beyond the candidates appends nothing
  }
  return out;
}

const SETTINGS: [string, Partial<SampleSettings>][] = [
  ["greedy (temperature 0)", { temperature: 0 }],
  ["top-k 1 at temperature 2", { temperature: 2, topK: 1 }],
  ["temperature only", { temperature: 0.7 }],
  ["top-k 40", { temperature: 1.3, topK: 40 }],
  ["top-k 5", { temperature: 1, topK: 5 }],
  ["top-k 1000", { temperature: 1, topK: 1000 }],
  ["top-p 0.9", { temperature: 1, topP: 0.9 }],
  ["top-k 40 + top-p 0.5", { temperature: 1, topK: 40, topP: 0.5 }],
  ["min-p 0.1", { temperature: 1, minP: 0.1 }],
  ["defaults", { temperature: 0.8, topK: 40, topP: 0.95, minP: 0.05 }],
  ["repetition penalty", {
    temperature: 0.9,
    topK: 50,
    topP: 0.95,
    minP: 0.02,
    repeatPenalty: 1.3,
    repeatLastN: 16,
  }],
  ["greedy with repetition penalty", { temperature: 0, repeatPenalty: 2, repeatLastN: 100 }],
  ["top-k off, long penalty window", { temperature: 1.1, repeatPenalty: 0.8, repeatLastN: 300 }],
];

for (const vocab of [1, 7, 1000, 32003]) {
  Deno.test(`sample op: vocab ${vocab} picks the reference's token for every setting`, async () => {
    const gpu = await getGpu();
    const logitsData = new Float32Array(vocab);
    const logits = gpu.buffer("logits", vocab * 4);
    const op = createSample(gpu, { label: "sample", vocab, logits });
    let fragile = 0, total = 0;
    try {
      for (const [name, partial] of SETTINGS) {
        for (let trial = 0; trial < 4; trial++) {
          const s = settings(partial);
          logitsData.set(randomF32(vocab, [1, 3, 8, 20][trial]));
          gpu.device.queue.writeBuffer(logits, 0, logitsData);
          // Recent tokens with repeats, some of them beyond the penalty window.
          const history = Array.from({ length: trial * 40 }, () => Math.floor(Math.random() * vocab));
          const draw = Math.floor(Math.random() * 1e6);
          const steps = 3;
          const got = await runOp(gpu, op, s, history, draw, steps);
          const want = referenceChain(logitsData, s, history, draw, steps);
          for (let i = 0; i < steps; i++) {
            total++;
            if (want[i].fragile) {
              fragile++;
              break; // the histories part ways from here
            }
            equal(got.tokens[i], want[i].token, `${name}, trial ${trial}, step ${i}`);
          }
          // The draw index advanced once per step; the ring holds the last repeatLastN tokens.
          equal(got.state[0], (draw + steps) >>> 0, `${name}: draw index`);
          if (s.repeatPenalty !== 1 && !want.some((w) => w.fragile)) {
            const drawn = got.tokens.filter((t) => t !== SAMPLE_BEYOND_CANDIDATES);
            const all = [...history, ...drawn].slice(-s.repeatLastN);
            const n = got.state[1];
            equal(n, all.length, `${name}: history count`);
            deepEqual(
              Array.from(got.state.subarray(4, 4 + n)).sort((a, b) => a - b),
              all.sort((a, b) => a - b),
              `${name}: history ring`,
            );
          }
        }
      }
      ok(fragile <= total * 0.05, `${fragile} of ${total} draws were too close to a boundary to compare`);
    } finally {
      op.destroy();
      logits.destroy();
    }
  });
}

Deno.test("sample op: top-k 1 and temperature 0 are argmax, ties to the lowest id", async () => {
  const gpu = await getGpu();
  for (const vocab of [7, 4099, 9001]) {
    const data = randomF32(vocab, 5);
    // Equal maxima in different blocks, and next to each other.
    for (const i of [vocab - 1, 4097, 4096, Math.floor(vocab / 3)]) if (i < vocab) data[i] = 9;
    const logits = gpu.buffer("logits", vocab * 4, data);
    const op = createSample(gpu, { label: "sample", vocab, logits });
    for (const s of [settings({ temperature: 0 }), settings({ topK: 1, temperature: 3 })]) {
      const got = await runOp(gpu, op, s, [], 0, 4);
      deepEqual(got.tokens, new Array(4).fill(argmax(data)));
    }
    // All equal: top-5 are ids 0…4; each of them comes up.
    const flat = new Float32Array(vocab).fill(-1.25);
    gpu.device.queue.writeBuffer(logits, 0, flat);
    const seen = new Set<number>();
    for (let i = 0; i < 8; i++) {
      const got = await runOp(gpu, op, settings({ topK: 5 }), [], 64 * i, 64);
      for (const t of got.tokens) seen.add(t);
    }
    deepEqual([...seen].sort(), [0, 1, 2, 3, 4]);
    op.destroy();
    logits.destroy();
  }
});

Deno.test("sample op: draws follow the softmax; the same seed repeats, another differs", async () => {
  const gpu = await getGpu();
  const vocab = 7;
  const data = Float32Array.from([0.5, -1, 2, 0, 1.5, -0.5, 1]);
  const logits = gpu.buffer("logits", vocab * 4, data);
  const op = createSample(gpu, { label: "sample", vocab, logits });
  const s = settings({ temperature: 1.5, seed: 1234 });
  const counts = new Array(vocab).fill(0);
  const draws = 64 * 40;
  const first: number[] = [];
  for (let c = 0; c < draws / 64; c++) {
    const got = await runOp(gpu, op, s, [], 64 * c, 64);
    if (c === 0) first.push(...got.tokens);
    for (const t of got.tokens) counts[t]++;
  }
  const weights = Array.from(data, (x) => Math.exp(x / 1.5));
  const sum = weights.reduce((a, b) => a + b);
  for (let i = 0; i < vocab; i++) {
    const p = weights[i] / sum;
    const sigma = Math.sqrt(draws * p * (1 - p));
    ok(Math.abs(counts[i] - draws * p) < 5 * sigma, `token ${i}: ${counts[i]} draws, expected ${draws * p}`);
  }
  deepEqual((await runOp(gpu, op, s, [], 0, 64)).tokens, first);
  const other = (await runOp(gpu, op, { ...s, seed: 99 }, [], 0, 64)).tokens;
  ok(other.join() !== first.join());
  op.destroy();
  logits.destroy();
});

/** The ids the CPU sampler's processors keep (penalty, top-k, top-p, min-p), most likely first. */
function cpuKept(logits: Float32Array, s: SampleSettings, history: number[]): number[] {
  const c: Candidates = {
    ids: Uint32Array.from(logits.keys()),
    logits: Float32Array.from(logits),
    n: logits.length,
    sorted: false,
  };
  for (
    const p of [repetitionPenalty(s.repeatPenalty, s.repeatLastN), topK(s.topK), topP(s.topP), minP(s.minP)]
  ) p(c, history);
  return Array.from(c.ids.subarray(0, c.n));
}

Deno.test("sample reference: keeps the same candidates as the CPU sampler's processors", () => {
  for (let trial = 0; trial < 40; trial++) {
    const vocab = [7, 300, 1000][trial % 3];
    const logits = randomF32(vocab, [2, 6][trial % 2]);
    const history = Array.from({ length: 20 }, () => Math.floor(Math.random() * vocab));
    const s = settings({
      topK: [0, 1, 5, 40][trial % 4],
      topP: [1, 0.9, 0.5][trial % 3],
      minP: [0, 0.05, 0.2][trial % 3],
      repeatPenalty: [1, 1.5][trial % 2],
      repeatLastN: 10,
    });
    const ref = sampleReference(logits, s, history, trial);
    if (ref.fragile) continue;
    deepEqual(Array.from(ref.kept), cpuKept(logits, s, history), `trial ${trial}`);
    ok(ref.kept.includes(ref.token));
  }
});

Deno.test("sample op: the candidate cap is documented; a nucleus beyond it is flagged", () => {
  equal(SAMPLE_CANDIDATE_CAP, 1024);
  const logits = randomF32(5000, 0.01); // nearly flat: the nucleus is larger than the cap
  const r = sampleReference(logits, settings({ topP: 0.99 }), [], 0);
  equal(r.kept.length, SAMPLE_CANDIDATE_CAP);
  ok(r.beyond);
  equal(r.token, SAMPLE_BEYOND_CANDIDATES);
  // Uncapped, the same rules keep the whole nucleus.
  const exact = sampleReference(logits, settings({ topP: 0.99 }), [], 0, 0, false);
  ok(!exact.beyond);
  ok(exact.kept.length > 4000, `${exact.kept.length} kept`);
});

/** Logits of `vocab` values with repeats (ties) and a `scale` of spread. */
function tiedLogits(vocab: number, scale: number): Float32Array<ArrayBuffer> {
  const data = new Float32Array(randomF32(vocab, scale));
  for (let i = 0; i < vocab; i += 7) data[i] = Math.fround(Math.round(data[i] * 4) / 4);
  return data;
}

Deno.test("sample op: beyond its candidates it gives the flag exactly where the reference does", async () => {
  const gpu = await getGpu();
  const vocab = 5003;
  const logits = gpu.buffer("logits", vocab * 4);
  const op = createSample(gpu, { label: "sample", vocab, logits });
  const kinds = new Set<string>();
  try {
    for (let trial = 0; trial < 12; trial++) {
      const s = settings({
        temperature: 0.9,
        topP: [0.5, 0.9, 0.99][trial % 3],
        minP: [0, 0, 0.3, 0.001][trial % 4],
        topK: [0, vocab, 0][trial % 3],
        repeatPenalty: [1, 1.4][trial % 2],
        repeatLastN: 32,
      });
      const data = tiedLogits(vocab, [0.05, 0.5, 4, 12][trial % 4]);
      gpu.device.queue.writeBuffer(logits, 0, data);
      const history = Array.from({ length: 40 }, () => Math.floor(Math.random() * vocab));
      const draw = Math.floor(Math.random() * 1e6);
      const got = await runOp(gpu, op, s, history, draw, 3);
      const want = referenceChain(data, s, history, draw, 3);
      for (let i = 0; i < 3; i++) {
        if (want[i].fragile) break;
        equal(got.tokens[i], want[i].token, `trial ${trial}, step ${i}`);
        kinds.add(want[i].beyond ? "beyond" : "drawn");
      }
    }
    deepEqual([...kinds].sort(), ["beyond", "drawn"]);
  } finally {
    op.destroy();
    logits.destroy();
  }
});

Deno.test("sample exact: keeps what the CPU sampler's processors keep over a vocabulary beyond the cap", () => {
  for (let trial = 0; trial < 24; trial++) {
    const vocab = [3000, 5003][trial % 2];
    const logits = tiedLogits(vocab, [0.05, 2, 8][trial % 3]);
    const history = Array.from({ length: 20 }, () => Math.floor(Math.random() * vocab));
    const s = settings({
      topK: [0, 1100, 40, vocab + 5][trial % 4],
      topP: [1, 0.9, 0.5][trial % 3],
      minP: [0, 0.05, 0.2, 0][trial % 4],
      repeatPenalty: [1, 1.5][trial % 2],
      repeatLastN: 10,
    });
    const ref = sampleReference(logits, s, history, trial, 1e-5, false);
    ok(!ref.beyond);
    if (ref.fragile) continue;
    deepEqual(Array.from(ref.kept), cpuKept(logits, s, history), `trial ${trial}`);
    equal(sampleExact(logits, s, history, trial), ref.token);
    // The draw is the first kept token whose cumulative weight passes the op's random number.
    const weights = Array.from(
      ref.kept,
      (id) => Math.exp((logits[id] - logits[ref.kept[0]]) / s.temperature),
    );
    const total = weights.reduce((a, b) => a + b);
    let run = 0;
    const target = sampleUniform(s.seed, trial) * total;
    const pick = weights.findIndex((w) => (run += w) > target);
    if (s.repeatPenalty === 1) equal(ref.token, ref.kept[pick < 0 ? ref.kept.length - 1 : pick]);
  }
});

Deno.test("sample exact: says which settings the GPU op draws itself", () => {
  const v = 128256;
  const d = (s: Partial<SampleSettings>, vocab = v) => deviceDraws(settings(s), vocab);
  equal(d({ temperature: 0 }), "always");
  equal(d({ topK: 40 }), "always");
  equal(d({ topK: SAMPLE_CANDIDATE_CAP }), "always");
  equal(d({}, SAMPLE_CANDIDATE_CAP), "always"); // the candidates are the whole vocabulary
  equal(d({ topP: 0.95 }), "mostly");
  equal(d({ minP: 0.05 }), "mostly");
  equal(d({ topK: v, topP: 0.9 }), "mostly");
  equal(d({}), "always"); // no cut at all: the op weighs the whole vocabulary
  equal(d({ topK: v }), "always");
  equal(d({ topK: SAMPLE_CANDIDATE_CAP + 1, topP: 0.9 }), "never");
  equal(d({ topK: SAMPLE_CANDIDATE_CAP + 1 }), "never");
});

Deno.test("sample op: with no cut at all it draws from the whole vocabulary, the tail beyond the cap too", async () => {
  const gpu = await getGpu();
  const vocab = 3000;
  // Nearly flat: two thirds of the mass lies beyond the 1024 most likely tokens.
  const data = new Float32Array(randomF32(vocab, 0.01));
  const logits = gpu.buffer("logits", vocab * 4, data);
  const op = createSample(gpu, { label: "sample", vocab, logits });
  try {
    const s = settings({ temperature: 1 });
    const ranked = sampleReference(data, s, [], 0).kept;
    const rank = new Map(Array.from(ranked, (id, r) => [id, r]));
    let tail = 0, compared = 0;
    const draws = 8 * 64;
    for (let c = 0; c < draws / 64; c++) {
      const got = await runOp(gpu, op, s, [], 64 * c, 64);
      for (const [i, token] of got.tokens.entries()) {
        ok(token < vocab, `draw ${64 * c + i}: ${token}`);
        if (rank.get(token)! >= SAMPLE_CANDIDATE_CAP) tail++;
        const want = sampleReference(data, s, [], 64 * c + i);
        if (want.fragile) continue;
        equal(token, want.token, `draw ${64 * c + i}`);
        compared++;
      }
    }
    const share = tail / draws;
    ok(share > 0.55 && share < 0.78, `${tail} of ${draws} draws beyond the cap`);
    ok(compared >= draws * 0.8, `only ${compared} of ${draws} draws compared`);
  } finally {
    op.destroy();
    logits.destroy();
  }
});

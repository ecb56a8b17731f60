// Whole models whose weight matrices are split by rows across several storage buffers (tensors larger than
// the largest storage binding), against the same models in one buffer per tensor. The real limits of a GPU
// (128 MiB on lavapipe) dwarf these test models, so the model is loaded through a view of the device that
// reports a small `maxStorageBufferBindingSize`.

import { ok } from "node:assert/strict";
import { openGGUF } from "../src/gguf/reader.ts";
import { getGpu } from "../src/gpu/device.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import type { GpuModelOptions } from "../src/model/gpu_model_options.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { writeSyntheticModel } from "../src/model/synth.ts";
import { importGate } from "../src/gate/import.ts";
import { fixture, fixtureTest } from "./fixtures.ts";
import { relativeError, smallBindingView } from "./gpu_ops_helpers.ts";

/** Largest storage binding the view reports: below the embedding and output matrices of both test models. */
const SMALL_BINDING = 40_000;

/** Names of the weights that were split, from the buffer labels (`name[rows a..b)`). */
function splitWeights(labels: string[]): Set<string> {
  return new Set(labels.flatMap((l) => /^(.+)\[rows \d+\.\.\d+\)$/.exec(l)?.[1] ?? []));
}

/**
 * Loads the model at `path` twice, plainly and through the small-binding view, and checks that the split
 * model gives the plain model's logits for a random prompt and decode steps, and that its chained greedy
 * tokens are argmaxes of the plain model's logits. Returns the names of the split weights.
 */
async function compareSplit(path: string, options: Partial<GpuModelOptions>): Promise<Set<string>> {
  const gpu = await getGpu();
  const file = await openGGUF(path);
  const hp = hparamsFromGGUF(file);
  const labels: string[] = [];
  const base = { contextLength: 128, maxBatch: 16, int8Prefill: false, int8Decode: false, ...options };
  const plain = await GpuModel.load(gpu, file, hp, base);
  const split = await GpuModel.load(smallBindingView(gpu, SMALL_BINDING, labels), file, hp, base);
  try {
    const prompt = Array.from({ length: 37 }, () => 3 + Math.floor(Math.random() * (hp.nVocab - 3)));
    const label = `${path} ${options.policy?.kind ?? "full"}`;
    const err = relativeError(
      await split.forward(prompt, 0, "logits"),
      await plain.forward(prompt, 0, "logits"),
    );
    // Each part's rows are the same sums as in one buffer (bit for bit on lavapipe).
    ok(err < 1e-5, `${label}: prefill relative error ${err}`);
    let pos = prompt.length;
    for (let i = 0; i < 4; i++, pos++) {
      const token = 3 + Math.floor(Math.random() * (hp.nVocab - 3));
      const e = relativeError(
        await split.forward([token], pos, "logits"),
        await plain.forward([token], pos, "logits"),
      );
      // Decode does change kernels: a split gate/up pair is not fused (nor its norm folded into the products),
      // so sums run in another order: up to ~1e-5 of the logits' scale, where both stay ~3e-4 from the CPU.
      ok(e < 1e-4, `${label}: decode step ${i}: relative error ${e}`);
    }
    // Chained greedy decode (argmax over the split output matrix, fed back on the GPU), teacher-forced into
    // the plain model: every pick is its largest logit, up to a tie within the decode bound above.
    const first = 7;
    const chain = await split.decodeGreedy(first, pos, 12);
    let feed = first;
    for (const [i, picked] of chain.entries()) {
      const logits = await plain.forward([feed], pos + i, "logits");
      const best = logits.reduce((m, v) => Math.max(m, v), -Infinity);
      const scale = logits.reduce((m, v) => Math.max(m, Math.abs(v)), 1);
      ok(
        best - logits[picked] <= 1e-4 * scale,
        `${label}: greedy step ${i} picked ${picked}`,
      );
      feed = picked;
    }
  } finally {
    plain.destroy();
    split.destroy();
    file.close();
  }
  return splitWeights(labels);
}

fixtureTest(
  "gpu model: stories260K with weights split across storage bindings gives the logits of one buffer per weight (full and wgkv)",
  ["stories260K.gguf", "gate/stories260K-gate-fp32.pt"],
  async () => {
    const gate = await importGate(fixture("gate/stories260K-gate-fp32.pt"), fixture("stories260K.gguf"), {});
    for (
      const policy of [{ kind: "full" as const }, { kind: "wgkv" as const, window: 16, threshold: 0.5, gate }]
    ) {
      const split = await compareSplit(fixture("stories260K.gguf"), { policy });
      // F32 512 × 64 (128 KiB) embedding and output, 172 × 64 feed-forward matrices (43 KiB).
      for (
        const name of ["token_embd.weight", "output.weight", "blk.0.ffn_gate.weight", "blk.4.ffn_down.weight"]
      ) {
        ok(split.has(name), `${name} was not split (split: ${[...split]})`);
      }
    }
  },
);

Deno.test("gpu model: a Q4_K_M model with weights split across storage bindings gives the logits of one buffer per weight", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/tiny-q4_k_m.gguf`;
    await writeSyntheticModel({
      shape: "tiny",
      type: "q4_k_m",
      out: path,
      seed: Math.floor(Math.random() * 1e6),
    });
    const split = await compareSplit(path, {});
    // Q4_K rows of 144 bytes and Q6_K rows of 210 (output) and 420 (ffn_down): parts of whole rows.
    for (
      const name of ["token_embd.weight", "output.weight", "blk.0.ffn_up.weight", "blk.1.ffn_down.weight"]
    ) {
      ok(split.has(name), `${name} was not split (split: ${[...split]})`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// The library entry point (`loadModel` from mod.ts) with KV policies, and the per-token timing of
// `Session.generate()`, on stories260K; the GGUF writer and the error classes that mod.ts exports.

import { deepEqual, equal, ok } from "node:assert/strict";
import * as wgkv from "../mod.ts";
import {
  type GeneratedPiece,
  type GenerateOptions,
  importGate,
  type KvPolicySpec,
  loadModel,
  metadataOf,
  type Model,
  openGGUF,
  type TensorEntry,
  writeGate,
  writeGGUF,
  writeSyntheticModel,
} from "../mod.ts";
import { fixture, fixtureTest } from "./fixtures.ts";

const MODEL = "stories260K.gguf";
const GATE = "gate/stories260K-gate-fp32.pt";
const WINDOW = 16;
const SINKS = 4;

/** A prompt: the tokenizer's BOS and text, then random tokens up to `n`. */
function prompt(model: Model, n: number): number[] {
  const ids = model.tokenizer.encode("Once upon a time", { addBos: true });
  while (ids.length < n) ids.push(3 + Math.floor(Math.random() * 500));
  return ids;
}

/** Every piece of one generate call, and its statistics. */
async function generateAll(model: Model, tokens: number[], options: GenerateOptions) {
  const session = model.session();
  const pieces: GeneratedPiece[] = [];
  for await (const piece of session.generate(tokens, options)) pieces.push(piece);
  return { session, pieces, stats: session.lastStats! };
}

fixtureTest(
  "library: loadModel with a kv option runs a session whose KV statistics follow the policy",
  [MODEL, GATE],
  async () => {
    const dir = await Deno.makeTempDir();
    try {
      // The gate as loaded weights, and as a gate GGUF path (resolved and checked against the model).
      const gate = await importGate(fixture(GATE), fixture(MODEL), { window: WINDOW, threshold: 0.5 });
      const gatePath = `${dir}/gate.gguf`;
      await writeGate(gatePath, gate);
      const specs: (KvPolicySpec | undefined)[] = [
        undefined,
        { kind: "window", window: WINDOW },
        { kind: "sink", window: WINDOW, sinks: SINKS },
        { kind: "wgkv", gate },
        { kind: "wgkv", gate: gatePath, threshold: 0 },
      ];
      for (const kv of specs) {
        const model = await loadModel(fixture(MODEL), {
          backend: "webgpu",
          contextLength: 128,
          maxBatch: 16,
          kv,
        });
        const kind = kv?.kind ?? "full";
        try {
          equal(model.backend.kind, "webgpu");
          // 30 prompt tokens and 30 generated: 59 in the cache, well past the window and its 32-slot ring.
          const { session, pieces, stats } = await generateAll(model, prompt(model, 30), {
            maxTokens: 30,
            temperature: 0,
            ignoreEos: true,
          });
          equal(stats.generatedTokens, 30, kind);
          equal(pieces.filter((p) => p.token >= 0).length, 30, kind);
          const usage = model.backend.kvUsage!();
          const label = `${kind} ${JSON.stringify(kv && { ...kv, gate: undefined })}`;
          equal(usage.policy, kind, label);
          equal(usage.tokens, session.tokens.length, label);
          equal(usage.tokens, 59, label);
          equal(model.backend.rewindable, kind === "full", label);
          const hp = model.hparams;
          if (kind === "full") {
            equal(usage.dual, undefined);
            equal(usage.usedBytes, usage.fullBytes);
            continue;
          }
          const dual = usage.dual!;
          equal(dual.admittedFraction.length, hp.nLayer * hp.nHeadKV, label);
          const keepsAll = kv?.kind === "wgkv" && kv.threshold === 0;
          // Dropped tokens save memory (keeping all of them costs the ring on top of a full cache's pages).
          ok(
            keepsAll ? usage.usedBytes >= usage.fullBytes : usage.usedBytes < usage.fullBytes,
            `${label}: ${usage.usedBytes} of ${usage.fullBytes} bytes`,
          );
          const admitted = [...dual.admittedFraction].map((f) => Math.round(f * usage.tokens));
          if (kv?.kind === "window") {
            deepEqual(admitted, admitted.map(() => 0), label);
            deepEqual([...dual.globalTokens], admitted.map(() => 0), label);
          } else if (kv?.kind === "sink") {
            // The first SINKS positions, in every layer and head, and they have left the ring.
            deepEqual(admitted, admitted.map(() => SINKS), label);
            deepEqual([...dual.globalTokens], admitted.map(() => SINKS), label);
          } else if (keepsAll) {
            // τ = 0 admits every token (scores are clamped to ≥ 1e-3).
            deepEqual(admitted, admitted.map(() => usage.tokens), label);
            ok(dual.globalTokens.every((g) => g > 0), label);
          } else {
            // The gate's own threshold (0.5): some tokens admitted, some not, some already promoted.
            ok(
              admitted.some((a) => a > 0) && admitted.some((a) => a < usage.tokens),
              `${label}: ${admitted}`,
            );
            ok(dual.globalTokens.some((g) => g > 0), label);
            ok(dual.globalTokens.every((g, i) => g <= admitted[i]), label);
          }
        } finally {
          model.close();
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

fixtureTest(
  "session: every generated piece carries a finite, non-negative ms, and they add up to prefill + decode time",
  [MODEL],
  async () => {
    for (const backend of ["webgpu", "cpu"] as const) {
      const model = await loadModel(fixture(MODEL), { backend, contextLength: 128, maxBatch: 16 });
      try {
        for (
          const [name, options] of [
            // Greedy: chained on the GPU (a chain's tokens share its time), one step at a time on the CPU.
            ["greedy", { temperature: 0 }],
            // Sampled: drawn on the GPU in chains, or by the CPU sampler from read-back logits.
            ["sampled", { temperature: 0.8, seed: Math.floor(Math.random() * 1e6) }],
          ] as const
        ) {
          const label = `${backend} ${name}`;
          const session = model.session();
          // Two turns: the second prefills its prompt after the first turn's cached tokens.
          for (const turn of [0, 1]) {
            const pieces: GeneratedPiece[] = [];
            for await (
              const piece of session.generate(prompt(model, 20 - 10 * turn), {
                ...options,
                maxTokens: 25,
                ignoreEos: true,
              })
            ) pieces.push(piece);
            const stats = session.lastStats!;
            equal(stats.generatedTokens, 25, label);
            for (const [i, p] of pieces.entries()) {
              ok(
                typeof p.ms === "number" && Number.isFinite(p.ms) && p.ms >= 0,
                `${label}: piece ${i}: ms ${p.ms}`,
              );
            }
            const tokens = pieces.filter((p) => p.token >= 0);
            equal(tokens.length, 25, label);
            // The first token's time is the prompt's prefill; the others share the decode time.
            equal(tokens[0].ms, stats.prefillMs, label);
            ok(stats.prefillMs > 0 && stats.decodeMs > 0, `${label}: ${JSON.stringify(stats)}`);
            const sum = tokens.reduce((s, p) => s + p.ms, 0);
            const total = stats.prefillMs + stats.decodeMs;
            ok(Math.abs(sum - total) <= 1e-9 * total, `${label}: pieces ${sum} ms, stats ${total} ms`);
          }
        }
      } finally {
        model.close();
      }
    }
  },
);

Deno.test("library: mod.ts exports the GGUF writer: a synthetic model rewritten through it reads back the same", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await writeSyntheticModel({ shape: "tiny", type: "q8_0", out: `${dir}/a.gguf` });
    const a = await openGGUF(`${dir}/a.gguf`);
    try {
      const tensors: TensorEntry[] = [];
      for (const t of a.tensors) {
        tensors.push({ name: t.name, type: t.type, shape: t.shape, data: await a.readBytes(t) });
      }
      await writeGGUF(`${dir}/b.gguf`, { metadata: metadataOf(a), tensors });
      const b = await openGGUF(`${dir}/b.gguf`);
      try {
        deepEqual(b.metadata, a.metadata);
        deepEqual(b.metadataTypes, a.metadataTypes);
        deepEqual(
          b.tensors.map((t) => [t.name, t.type, t.shape]),
          a.tensors.map((t) => [t.name, t.type, t.shape]),
        );
        for (const t of a.tensors) {
          deepEqual(await b.readBytes(b.tensor(t.name)), await a.readBytes(t), t.name);
        }
      } finally {
        b.close();
      }
    } finally {
      a.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("library: mod.ts exports the error classes, and not the helpers beside them", () => {
  for (
    const E of [
      wgkv.BadFileError,
      wgkv.UnsupportedError,
      wgkv.BadFlagError,
      wgkv.OutOfMemoryError,
      wgkv.DeviceError,
    ]
  ) {
    const e = new E("message");
    ok(e instanceof wgkv.WgkvError && e instanceof Error, E.name);
    equal(e.name, E.name);
    equal(e.exitCode, E === wgkv.BadFlagError ? 2 : 1, E.name);
  }
  ok(new wgkv.PrefillAbortedError(3) instanceof Error);
  const names = Object.keys(wgkv);
  for (const helper of ["checkFile", "firstLine"]) ok(!names.includes(helper), `${helper} is exported`);
});

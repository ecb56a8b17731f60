/**
 * Resuming a WG-KV (dual) cache after tokens decoded ahead: a chain of greedy or GPU-sampled steps runs
 * past where a stop string or end of generation ends a reply, and the next call must go on from where the
 * session is, exactly as a cache that never saw the tokens decoded ahead.
 */

import { equal, ok, rejects } from "node:assert/strict";
import { openGGUF } from "../src/gguf/reader.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { GpuModel } from "../src/model/gpu_model.ts";
import { getGpu } from "../src/gpu/device.ts";
import { importGate } from "../src/gate/import.ts";
import type { GateWeights } from "../src/gate/format.ts";
import type { KvPolicy } from "../src/kv/wgkv_policy.ts";
import type { DualCache } from "../src/kv/dual_cache.ts";
import { loadModel } from "../src/engine/load.ts";
import { BadFlagError } from "../src/errors.ts";
import { fixture, fixtureTest } from "./fixtures.ts";
import { runCli } from "./cli_process.ts";

const MODEL = "stories260K.gguf";
const GATE = "gate/stories260K-gate-fp32.pt";

/** The policies under test, windows short enough that tokens leave them (and the ring) in a few steps. */
async function policies(window: number): Promise<KvPolicy<GateWeights>[]> {
  const gate = await importGate(fixture(GATE), fixture(MODEL), { window });
  return [
    { kind: "window", window },
    { kind: "wgkv", window, threshold: 0.5, gate },
    { kind: "random", window, rate: 0.5, seed: 3 },
  ];
}

fixtureTest(
  "wgkv resume: after a stop string ends a chain early, the next generate() goes on from the session",
  [MODEL, GATE],
  async () => {
    const story = "Once upon a time, there was a little girl named Lily. She loved to play outside in the " +
      "park with her friends. One day, her mom gave her a big red ball and said she could take it to the";
    for (const kv of await policies(32)) {
      // A prefill step of 16 tokens: a ring of 48, so the prompt and the reply move tokens out of it.
      const model = await loadModel(fixture(MODEL), {
        backend: "webgpu",
        kv,
        maxBatch: 16,
        contextLength: 256,
      });
      try {
        const session = model.session();
        const prompt = model.tokenizer.encode(story, { addBos: true });
        // The reply's pieces, to pick a stop string that ends it at its 10th token: in the middle of the
        // third chain (the first token comes from the prefill, then chains of 2, 4 and 8 tokens).
        const probe: string[] = [];
        for await (const piece of session.generate(prompt, { temperature: 0, maxTokens: 12 })) {
          probe.push(piece.text);
        }
        const upTo = probe.slice(0, 10).join("");
        const stop = upTo.slice(-4);
        equal(upTo.indexOf(stop), upTo.length - 4, `${kv.kind}: ${JSON.stringify(upTo)}`);
        session.reset();
        let text = "";
        for await (const piece of session.generate(prompt, { temperature: 0, maxTokens: 60, stop: [stop] })) {
          text += piece.text;
        }
        equal(session.lastStats?.stopReason, "stop", kv.kind);
        equal(session.lastStats?.generatedTokens, 10, kv.kind);
        equal(text, upTo.slice(0, -4), kv.kind);
        const held = model.backend.kvUsage!().tokens;
        equal(held, session.tokens.length + 5, `${kv.kind}: the chain went 5 tokens past the stop`);
        // Tokens left the ring of 48: dropped, or promoted (admitted ones) to global pages.
        ok(held > 48, `${kv.kind}: ${held} cached`);
        const promoted = model.backend.kvUsage!().dual!.globalTokens.reduce((a, b) => a + b, 0);
        ok(kv.kind === "window" ? promoted === 0 : promoted > 0, `${kv.kind}: ${promoted} promoted`);
        const more = model.tokenizer.encode(" Then", { addBos: false });
        let next = "";
        for await (const piece of session.generate(more, { temperature: 0, maxTokens: 20 })) {
          next += piece.text;
        }
        // Only the new tokens and the one sampled last ran: the cache was kept.
        equal(session.lastStats?.promptTokens, more.length + 1, kv.kind);
        equal(session.lastStats?.generatedTokens, 20, `${kv.kind}: ${JSON.stringify(next)}`);
        equal(model.backend.kvUsage!().tokens, session.tokens.length, kv.kind);
      } finally {
        model.close();
      }
    }
  },
);

/** Loads stories260K under `policy` as a bare {@link GpuModel}. */
async function load(policy: KvPolicy<GateWeights>): Promise<GpuModel> {
  const file = await openGGUF(fixture(MODEL));
  const model = await GpuModel.load(await getGpu(), file, hparamsFromGGUF(file), {
    contextLength: 256,
    maxBatch: 8,
    policy,
  });
  file.close();
  return model;
}

/** Sum of the global tokens of every layer and head. */
function globalTokens(model: GpuModel): number {
  return model.kvStats().dual!.globalTokens.reduce((a, b) => a + b, 0);
}

fixtureTest(
  "wgkv resume: rewinding a chain decoded ahead equals a cache fed only the kept tokens (logits and tokens)",
  [MODEL, GATE],
  async () => {
    const prompt = [1, ...Array.from({ length: 99 }, (_, i) => 3 + ((i * 37) % 500))];
    for (const policy of (await policies(16)).slice(1)) {
      const ahead = await load(policy);
      const kv = ahead.kv as DualCache;
      equal(kv.ringTokens, 32); // the window and a step of 8, in whole pages
      const back = kv.maxRewind; // 17: the deepest rewind that is always possible
      const first = await ahead.forward(prompt, 0, "argmax");
      const chain = await ahead.decodeGreedy(first, prompt.length, back + 1);
      const fed = [first, ...chain.slice(0, -1)]; // the tokens at positions prompt.length …
      const globalAhead = globalTokens(ahead), pagesAhead = kv.pool.usedPages;
      // Back to the first token of the chain: every later step is undone, the promotions of all of them too.
      const logits = await ahead.forward([fed[1]], prompt.length + 1, "logits");
      ok(globalTokens(ahead) < globalAhead, `${policy.kind}: the rewound steps had promoted tokens`);
      ok(kv.pool.usedPages < pagesAhead, `${policy.kind}: emptied global pages went back to the pool`);

      const stepwise = await load(policy);
      equal(await stepwise.forward(prompt, 0, "argmax"), first);
      equal(await stepwise.forward([fed[0]], prompt.length, "argmax"), fed[1]);
      const expected = await stepwise.forward([fed[1]], prompt.length + 1, "logits");
      equal(globalTokens(ahead), globalTokens(stepwise), `${policy.kind}: global tokens`);
      let worst = 0;
      for (let i = 0; i < expected.length; i++) worst = Math.max(worst, Math.abs(logits[i] - expected[i]));
      ok(worst <= 1e-5, `${policy.kind}: logits after the rewind differ by ${worst}`);

      // Both go on greedily (a chain again, then a rewind of a few tokens in the middle of it): same tokens.
      let argmax = 0;
      for (let i = 1; i < expected.length; i++) if (expected[i] > expected[argmax]) argmax = i;
      const pos = prompt.length + 2;
      const a = await ahead.decodeGreedy(argmax, pos, 12);
      const b = [];
      for (let i = 0, t = argmax; i < 12; i++) b.push(t = await stepwise.forward([t], pos + i, "argmax"));
      equal(a.join(), b.join(), `${policy.kind}: greedy tokens after the rewind`);
      equal(await ahead.forward([a[4]], pos + 5, "argmax"), b[5], `${policy.kind}: after a second rewind`);
      ahead.destroy();
      stepwise.destroy();
    }
  },
);

fixtureTest(
  "wgkv resume: further back than the ring allows is a one-line error; position 0 starts again",
  [MODEL],
  async () => {
    const model = await load({ kind: "window", window: 16 });
    const prompt = [1, ...Array.from({ length: 59 }, (_, i) => 3 + ((i * 11) % 500))];
    const first = await model.forward(prompt, 0, "argmax");
    await model.decodeGreedy(first, prompt.length, 8);
    const held = prompt.length + 8, earliest = held - (model.kv as DualCache).maxRewind;
    ok(model.canResumeAt(earliest) && model.canResumeAt(held) && model.canResumeAt(0));
    ok(!model.canResumeAt(earliest - 1) && !model.canResumeAt(held + 1));
    await rejects(
      model.forward([5], earliest - 1, "argmax"),
      (e: Error) =>
        e instanceof BadFlagError && !e.message.includes("\n") &&
        e.message.includes(`cannot resume at position ${earliest - 1} (only at 0 or ${earliest} … ${held}`),
    );
    equal(await model.forward(prompt, 0, "argmax"), first);
    model.destroy();
  },
);

/** The counts a chat turn reports on stderr: tokens reused from the cache and tokens prefilled. */
function turns(stderr: string): { reused: number; prefilled: number }[] {
  const out: { reused: number; prefilled: number }[] = [];
  let reused = 0;
  for (const line of stderr.split("\n")) {
    const r = /^\((\d+) tokens of the conversation reused/.exec(line);
    if (r) reused = Number(r[1]);
    const p = /^prefill: (\d+) tokens/.exec(line);
    if (p) {
      out.push({ reused, prefilled: Number(p[1]) });
      reused = 0;
    }
  }
  return out;
}

fixtureTest("wgkv resume: chat keeps the cache across turns under --kv window", [MODEL], async () => {
  const messages = "Tell me a story about a cat\nWhat did the cat do next?\nAnd then?\n";
  const r = await runCli(
    ["chat", "-m", fixture(MODEL), "--kv", "window", "--window", "16", "-b", "32", "-n", "24", "--temp", "0"],
    {},
    messages,
  );
  equal(r.code, 0, r.stderr);
  const t = turns(r.stderr);
  equal(t.length, 3, r.stderr);
  // Each turn reuses at least the conversation up to the previous reply, and prefills only what follows.
  ok(t[1].reused >= t[0].prefilled, r.stderr);
  ok(t[2].reused >= t[1].reused + t[1].prefilled, r.stderr);
});

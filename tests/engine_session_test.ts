import { deepEqual, equal, ok, rejects } from "node:assert/strict";
import type { ModelBackend } from "../src/engine/backend.ts";
import { type GeneratedPiece, Session } from "../src/engine/session.ts";
import type { Tokenizer } from "../src/tokenizer/tokenizer.ts";
import { OutOfMemoryError, PrefillAbortedError } from "../src/errors.ts";
import { loadModel } from "../src/engine/load.ts";
import { fixture, fixtureTest } from "./fixtures.ts";

// A fake model whose argmax is a script: step i returns script[i]; it records every call.
function scriptedBackend(script: number[], contextLength = 100) {
  const calls: { tokens: number[]; pos: number }[] = [];
  const backend = {
    kind: "cpu",
    hparams: {} as ModelBackend["hparams"],
    contextLength,
    forward: () => Promise.reject(new Error("not used")),
    forwardArgmax(tokens: number[], pos: number) {
      calls.push({ tokens: [...tokens], pos });
      return Promise.resolve(script[calls.length - 1]);
    },
    describe: () => [],
    dispose() {},
  } as ModelBackend;
  return { backend, calls };
}

// Token i decodes to the letter of `alphabet[i]`; 0 is BOS, 1 is EOS.
const alphabet = "^$abcdefghijklmnopqrstuvwxyz ";
const tokenizer = {
  bos: 0,
  eos: 1,
  addBos: true,
  isEndOfGeneration: (id: number) => id === 1,
  streamDecoder: () => ({ push: (id: number) => alphabet[id], flush: () => "" }),
} as unknown as Tokenizer;
const ids = (s: string) => [...s].map((c) => alphabet.indexOf(c));

async function collect(gen: AsyncGenerator<GeneratedPiece, unknown>): Promise<string> {
  let text = "";
  for await (const p of gen) text += p.text;
  return text;
}

Deno.test("session: stop strings end generation before the match and hold back partial matches", async () => {
  const { backend } = scriptedBackend(ids("hello world"));
  const s = new Session(backend, tokenizer);
  const pieces: string[] = [];
  const gen = s.generate([0], { temperature: 0, stop: ["lo w"] });
  for await (const p of gen) pieces.push(p.text);
  equal(pieces.join(""), "hel");
  equal(s.lastStats?.stopReason, "stop");
});

Deno.test("session: EOS stops; the next turn feeds the unfed token first at the right position", async () => {
  const { backend, calls } = scriptedBackend([...ids("ab"), 1, ...ids("cd")]);
  const s = new Session(backend, tokenizer);
  equal(await collect(s.generate([0, 5], { temperature: 0 })), "ab");
  equal(s.lastStats?.stopReason, "eos");
  deepEqual(s.tokens, [0, 5, ...ids("ab")]);
  await collect(s.generate(ids("x"), { temperature: 0, maxTokens: 1 }));
  // The EOS token (1) was sampled but never run: it leads the second call, at position 4.
  deepEqual(calls[3], { tokens: [1, ...ids("x")], pos: 4 });
});

Deno.test("session: rewind keeps a prefix and the next call overwrites from there", async () => {
  const { backend, calls } = scriptedBackend(ids("abcdefgh"));
  const s = new Session(backend, tokenizer);
  await collect(s.generate([0, 2, 3, 4], { temperature: 0, maxTokens: 3 }));
  s.rewind(2);
  await collect(s.generate([9], { temperature: 0, maxTokens: 1 }));
  deepEqual(calls.at(-1), { tokens: [9], pos: 2 });
  deepEqual(s.transcript.slice(0, 3), [0, 2, 9]);
});

Deno.test("session: a prompt past the context is a clear error; generation stops at the context", async () => {
  const { backend } = scriptedBackend(ids("abcdefghijkl"), 6);
  const s = new Session(backend, tokenizer);
  await rejects(collect(s.generate([0, 2, 3, 4, 5, 6, 7], { temperature: 0 })), OutOfMemoryError);
  await collect(s.generate([0, 2, 3], { temperature: 0, maxTokens: 50 }));
  equal(s.lastStats?.stopReason, "context");
  equal(s.tokens.length, 6);
});

Deno.test("session: an aborted signal stops between tokens", async () => {
  const { backend } = scriptedBackend(ids("abcdefgh"));
  const s = new Session(backend, tokenizer);
  const ctl = new AbortController();
  let n = 0;
  for await (const _ of s.generate([0], { temperature: 0, signal: ctl.signal })) {
    if (++n === 2) ctl.abort();
  }
  equal(n, 2);
  equal(s.lastStats?.stopReason, "abort");
});

Deno.test("session: a signal aborted before the call runs nothing and leaves the conversation as it was", async () => {
  const { backend, calls } = scriptedBackend([...ids("ab"), ...ids("cd")]);
  const s = new Session(backend, tokenizer);
  equal(await collect(s.generate(ids("^x"), { temperature: 0, maxTokens: 2 })), "ab");
  const transcript = s.transcript;
  const stop = new AbortController();
  stop.abort();
  const r = await s.generate(ids("yy"), { temperature: 0, signal: stop.signal }).next();
  deepEqual(r, {
    done: true,
    value: { ...r.value!, promptTokens: 0, generatedTokens: 0, stopReason: "abort" },
  });
  equal(calls.length, 2);
  deepEqual(s.transcript, transcript);
  equal(await collect(s.generate(ids("z"), { temperature: 0, maxTokens: 2 })), "cd");
  deepEqual(calls.at(-2), { tokens: ids("bz"), pos: 3 });
});

Deno.test("session: chained greedy decoding yields the same tokens and resumes at the right position", async () => {
  const script = ids("abcdefghijklmnopqrstuvwxyz");
  const { backend, calls } = scriptedBackend(script);
  const chains: { first: number; pos: number; count: number }[] = [];
  let next = 1; // index into the script after the prefill's token
  backend.decodeGreedy = (first: number, pos: number, count: number) => {
    chains.push({ first, pos, count });
    const out = script.slice(next, next + count);
    next += count;
    return Promise.resolve(out);
  };
  (backend as { maxChain: number }).maxChain = 8;
  const s = new Session(backend, tokenizer);
  equal(await collect(s.generate([0, 2], { temperature: 0, maxTokens: 12, stop: ["j"] })), "abcdefghi");
  deepEqual(calls.length, 1); // only the prefill went through forwardArgmax
  // Chains of 2, then 4, then what is left of the 12 tokens (the chain would have doubled to 8).
  deepEqual(chains.map((c) => [c.pos, c.count]), [[2, 2], [4, 4], [8, 5]]);
  deepEqual(s.tokens, [0, 2, ...ids("abcdefghi")]);
});

Deno.test("session: onPrefill is the backend's progress hook for the prompt only", async () => {
  const { backend } = scriptedBackend([5, 6, 7]);
  const seen: (ModelBackend["prefillProgress"] | undefined)[] = [];
  const argmax = backend.forwardArgmax.bind(backend);
  backend.forwardArgmax = (tokens, pos) => {
    seen.push(backend.prefillProgress);
    return argmax(tokens, pos);
  };
  const onPrefill = () => {};
  const session = new Session(backend, tokenizer);
  equal(await collect(session.generate(ids("^ab"), { maxTokens: 3, temperature: 0, onPrefill })), "def");
  deepEqual(seen, [onPrefill, undefined, undefined]);
  equal(backend.prefillProgress, undefined);
});

// A scripted backend on which Ctrl-C comes during any prefill given a signal: `stop` is aborted and the call
// rejects as a real backend does once it sees its prefill signal aborted (after `done` tokens).
function stoppingBackend(script: number[], stop: AbortController, done: number, rewindable: boolean) {
  const scripted = scriptedBackend(script);
  const argmax = scripted.backend.forwardArgmax.bind(scripted.backend);
  scripted.backend.forwardArgmax = (tokens, pos) => {
    if (tokens.length > 1 && scripted.backend.prefillSignal !== undefined) {
      stop.abort();
      if (scripted.backend.prefillSignal.aborted) {
        scripted.calls.push({ tokens: [...tokens], pos });
        return Promise.reject(new PrefillAbortedError(done));
      }
    }
    return argmax(tokens, pos);
  };
  (scripted.backend as { rewindable: boolean }).rewindable = rewindable;
  return scripted;
}

for (const rewindable of [true, false]) {
  Deno.test(`session: a prompt stopped in its prefill leaves the conversation as it was (rewindable: ${rewindable})`, async () => {
    // Turn 1 writes "ab" (b stays unfed), turn 2 is stopped in its prefill (its script entry unused), turn 3
    // goes on as if it never was.
    const stop = new AbortController();
    const { backend, calls } = stoppingBackend([...ids("ab"), 0, ...ids("cd")], stop, 2, rewindable);
    const s = new Session(backend, tokenizer);
    equal(await collect(s.generate(ids("^x"), { temperature: 0, maxTokens: 2 })), "ab");
    const transcript = s.transcript;
    const stopped = s.generate(ids("yyy"), { temperature: 0, signal: stop.signal });
    const r = await stopped.next();
    equal(r.done, true);
    deepEqual(r.value, { ...r.value, promptTokens: 2, generatedTokens: 0, stopReason: "abort" });
    deepEqual(calls.at(-1), { tokens: ids("byyy"), pos: 3 });
    equal(backend.prefillSignal, undefined);
    deepEqual(s.transcript, transcript);
    // A call stopped before it ran anything changes nothing (a pending restart stays pending).
    const calls0 = calls.length;
    await s.generate(ids("w"), { temperature: 0, signal: stop.signal }).next();
    equal(calls.length, calls0);
    deepEqual(s.transcript, transcript);
    equal(await collect(s.generate(ids("z"), { temperature: 0, maxTokens: 2 })), "cd");
    // A cache that cannot rewind runs the whole conversation again from 0; one that can resumes at 3.
    deepEqual(calls.at(-2), rewindable ? { tokens: ids("bz"), pos: 3 } : { tokens: ids("^xabz"), pos: 0 });
    deepEqual(s.transcript, ids("^xabzcd"));
  });
}

fixtureTest(
  "cpu backend: an aborted prefillSignal stops a prompt every 64 tokens",
  ["stories260K.gguf"],
  async () => {
    const model = await loadModel(fixture("stories260K.gguf"), { backend: "cpu" });
    try {
      const prompt = Array.from({ length: 150 }, (_, i) => 1 + ((i * 37) % 500));
      const want = await model.backend.forward(prompt, 0);
      const stop = new AbortController();
      model.backend.prefillProgress = () => stop.abort();
      model.backend.prefillSignal = stop.signal;
      const stopped = await model.backend.forward(prompt.toReversed(), 0).catch((e) => e);
      ok(stopped instanceof PrefillAbortedError, String(stopped));
      equal(stopped.done, 64);
      model.backend.prefillProgress = model.backend.prefillSignal = undefined;
      deepEqual(Array.from(await model.backend.forward(prompt, 0)), Array.from(want));
    } finally {
      model.close();
    }
  },
);

fixtureTest("cpu backend: prefillProgress every 64 tokens but at the end", ["stories260K.gguf"], async () => {
  const model = await loadModel(fixture("stories260K.gguf"), { backend: "cpu" });
  try {
    const reports: [number, number][] = [];
    model.backend.prefillProgress = (done, total) => reports.push([done, total]);
    const prompt = (n: number) => Array.from({ length: n }, (_, i) => 1 + ((i * 37) % 500));
    await model.backend.forwardArgmax(prompt(150), 0);
    deepEqual(reports, [[64, 150], [128, 150]]);
    reports.length = 0;
    await model.backend.forwardArgmax(prompt(128), 0);
    deepEqual(reports, [[64, 128]]);
  } finally {
    model.close();
  }
});

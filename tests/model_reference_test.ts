import { equal, ok } from "node:assert/strict";
import { openGGUF } from "../src/gguf/reader.ts";
import { hparamsFromGGUF } from "../src/model/hparams.ts";
import { ReferenceModel } from "../src/model/reference.ts";
import { fixture, fixtureTest } from "./fixtures.ts";

interface Golden {
  input_tokens: number[];
  greedy_tokens: number[];
  logits_at: Record<string, number[]>;
}

function argmax(x: Float32Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

fixtureTest("stories260K: hyper-parameters", ["stories260K.gguf"], async () => {
  const file = await openGGUF(fixture("stories260K.gguf"));
  try {
    const hp = hparamsFromGGUF(file);
    equal(hp.nLayer, 5);
    equal(hp.nEmbd, 64);
    equal(hp.nFF, 172);
    equal(hp.nHead, 8);
    equal(hp.nHeadKV, 4);
    equal(hp.headDim, 8);
    equal(hp.ropeDim, 8);
    equal(hp.nVocab, 512);
    equal(hp.contextLength, 2048);
    equal(hp.ropeBase, 10000);
    equal(hp.tiedOutput, false);
    equal(hp.hasRopeFreqs, false);
    equal(hp.ropeScaling, undefined);
    ok(Math.abs(hp.rmsEps - 1e-5) < 1e-9);
  } finally {
    file.close();
  }
});

fixtureTest(
  "stories260K: 200 greedy tokens from BOS and teacher-forced logits match the golden file",
  ["stories260K.gguf", "stories260K.greedy.json"],
  async () => {
    const golden: Golden = JSON.parse(await Deno.readTextFile(fixture("stories260K.greedy.json")));
    const file = await openGGUF(fixture("stories260K.gguf"));
    const model = await ReferenceModel.load(file);
    file.close();

    // Greedy decoding from BOS.
    const generated: number[] = [];
    let token = golden.input_tokens[0];
    for (let pos = 0; pos < golden.greedy_tokens.length; pos++) {
      token = argmax(model.forward(token, pos));
      generated.push(token);
    }
    equal(generated.join(","), golden.greedy_tokens.join(","));

    // Teacher-forced logits at the stored positions, from a fresh cache.
    model.reset();
    const sequence = [golden.input_tokens[0], ...golden.greedy_tokens];
    const last = Math.max(...Object.keys(golden.logits_at).map(Number));
    let worst = 0;
    for (let pos = 0; pos <= last; pos++) {
      const logits = model.forward(sequence[pos], pos);
      const expected = golden.logits_at[String(pos)];
      if (!expected) continue;
      equal(expected.length, logits.length);
      for (let i = 0; i < logits.length; i++) {
        // The golden values are rounded to 6 significant digits.
        const err = Math.abs(logits[i] - expected[i]) / Math.max(1, Math.abs(expected[i]));
        worst = Math.max(worst, err);
      }
    }
    ok(worst < 1e-4, `worst logit error ${worst}`);
    console.log(`worst relative logit error ${worst.toExponential(2)}`);
  },
);

fixtureTest("stories260K: rewinding gives the same logits as a fresh run", ["stories260K.gguf"], async () => {
  const file = await openGGUF(fixture("stories260K.gguf"));
  const model = await ReferenceModel.load(file);
  file.close();
  const tokens = [1, 403, 407, 261, 378];
  let fresh: Float32Array = new Float32Array(0);
  for (let pos = 0; pos < tokens.length; pos++) fresh = model.forward(tokens[pos], pos);
  model.forward(99, 3); // overwrite position 3 with another token, then rewind to it
  model.forward(tokens[3], 3);
  const again = model.forward(tokens[4], 4);
  for (let i = 0; i < fresh.length; i++) equal(again[i], fresh[i]);
  equal(model.length, 5);
});

fixtureTest(
  "llama-2-tiny-random (F16 weights): a few steps give finite logits",
  ["llama-2-tiny-random.gguf"],
  async () => {
    const file = await openGGUF(fixture("llama-2-tiny-random.gguf"));
    const model = await ReferenceModel.load(file);
    file.close();
    equal(model.hparams.nVocab, 32000);
    equal(model.hparams.headDim, 4);
    let token = 1;
    for (let pos = 0; pos < 6; pos++) {
      const logits = model.forward(token, pos);
      equal(logits.length, 32000);
      ok(logits.every(Number.isFinite));
      token = argmax(logits);
    }
    const hidden = model.forwardHidden(token, 6);
    equal(hidden.length, 8);
    ok(hidden.every(Number.isFinite));
  },
);

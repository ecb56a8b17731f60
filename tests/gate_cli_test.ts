import { deepEqual, equal, notDeepEqual, ok, rejects } from "node:assert/strict";
import { gateCommand } from "../src/cli/gate.ts";
import { BadFileError, BadFlagError } from "../src/errors.ts";
import { readGate } from "../src/gate/format.ts";
import { initGate } from "../src/gate/init.ts";
import { erf, gateScores, gelu } from "../src/gate/reference.ts";
import { openGGUF } from "../src/gguf/reader.ts";
import { fixture, fixtureTest } from "./fixtures.ts";

const MODEL = "stories260K.gguf";
const FP32 = "gate/stories260K-gate-fp32.pt";

/** Runs `fn` with console.log captured; returns what it printed. */
async function captureLog(fn: () => Promise<unknown>): Promise<string> {
  const lines: string[] = [];
  const log = console.log, error = console.error;
  console.log = (...a: unknown[]) => lines.push(a.join(" "));
  console.error = () => {};
  try {
    await fn();
  } finally {
    console.log = log;
    console.error = error;
  }
  return lines.join("\n");
}

Deno.test("erf matches reference values to 1e-13 and GELU is x·Φ(x)", () => {
  // Values of erf from a float64 libm (CPython math.erf).
  const table: [number, number][] = [
    [0, 0],
    [1e-8, 1.1283791670955126e-8],
    [0.1, 0.1124629160182849],
    [0.5, 0.5204998778130465],
    [1, 0.8427007929497149],
    [2, 0.9953222650189527],
    [2.9, 0.9999589021219005],
    [3, 0.9999779095030014],
    [3.1, 0.9999883513426328],
    [4, 0.9999999845827421],
    [5, 0.9999999999984626],
    [7, 1],
  ];
  for (const [x, want] of table) {
    ok(Math.abs(erf(x) - want) < 1e-13, `erf(${x}) = ${erf(x)}, expected ${want}`);
    ok(Math.abs(erf(-x) + want) < 1e-13, `erf(${-x})`);
  }
  // Continuity across the switch from series to continued fraction.
  ok(Math.abs(erf(3 - 1e-12) - erf(3 + 1e-12)) < 1e-13);
  equal(gelu(0), 0);
  ok(Math.abs(gelu(1) - 0.8413447460685429) < 1e-13);
  ok(Math.abs(gelu(-1) + 0.15865525393145707) < 1e-13);
});

fixtureTest("gate init: seeded PyTorch-default init, bound to the model, scores ≈ 0.5", [MODEL], async () => {
  const model = await openGGUF(fixture(MODEL));
  try {
    const a = await initGate(model, { seed: 7 });
    const b = await initGate(model, { seed: 7 });
    const c = await initGate(model, { seed: 8 });
    deepEqual(a.layers, b.layers);
    notDeepEqual(a.layers[0].w1, c.layers[0].w1);
    equal(a.layers.length, 5);
    equal(a.inner, 32);
    equal(a.keyOrder, "gguf");
    const D = 8;
    for (const layer of a.layers) {
      ok(layer.preNorm.every((v) => v === 1) && layer.postNorm.every((v) => v === 1));
      const b1 = 1 / Math.sqrt(2 * D), b2 = 1 / Math.sqrt(32);
      ok(layer.w1.every((v) => Math.abs(v) <= b1) && layer.b1.every((v) => Math.abs(v) <= b1));
      ok(layer.w2.every((v) => Math.abs(v) <= b2) && layer.b2.every((v) => Math.abs(v) <= b2));
      // Not degenerate: spread over most of the range.
      ok(Math.max(...layer.w1) > 0.8 * b1 && Math.min(...layer.w1) < -0.8 * b1);
    }
    const T = 33, H = 4;
    const keys = () => Float32Array.from({ length: T * H * D }, () => Math.random() * 4 - 2 || 1);
    const s = gateScores(a, 2, keys(), keys(), T);
    equal(s.length, H * T);
    const mean = s.reduce((x, y) => x + y, 0) / s.length;
    ok(mean > 0.3 && mean < 0.7, `mean initial score ${mean}`);
  } finally {
    model.close();
  }
});

fixtureTest("wgkv gate: init, import, info (text and JSON), flag errors", [MODEL, FP32], async () => {
  const dir = await Deno.makeTempDir();
  try {
    const init = `${dir}/init.gguf`, imported = `${dir}/imported.gguf`;
    equal(
      await gateCommand.main([
        "init",
        "--model",
        fixture(MODEL),
        "--out",
        init,
        "--seed",
        "3",
        "--window",
        "32",
      ]),
      0,
    );
    const model = await openGGUF(fixture(MODEL));
    const g = await readGate(init, model).finally(() => model.close());
    equal(g.window, 32);
    equal(g.threshold, Math.fround(0.1));
    equal(
      await gateCommand.main([
        "import",
        fixture(FP32),
        "-m",
        fixture(MODEL),
        "-o",
        imported,
        "--threshold",
        "0.2",
      ]),
      0,
    );
    const text = await captureLog(() => gateCommand.main(["info", imported, "--model", fixture(MODEL)]));
    ok(/key_order\s+gguf/.test(text) && /fits_model/.test(text), text);
    const json = JSON.parse(await captureLog(() => gateCommand.main(["info", imported, "--json"])));
    equal(json.layers, 5);
    equal(json.kv_heads, 4);
    equal(json.inner, 32);
    equal(json.parameters, 5 * (2 * 8 + 4 * 32 * 16 + 2 * 4 * 32 + 4));
    ok(Math.abs(json.threshold - 0.2) < 1e-7);
    ok(/import/.test(await captureLog(() => gateCommand.main(["--help"]))));
    ok(/CHECKPOINT/.test(await captureLog(() => gateCommand.main(["import", "--help"]))));
    await rejects(gateCommand.main(["frobnicate"]), BadFlagError);
    await rejects(gateCommand.main(["init", "--model", fixture(MODEL)]), BadFlagError); // no --out
    await rejects(
      gateCommand.main(["init", "-m", fixture(MODEL), "-o", init, "--window", "0"]),
      BadFlagError,
    );
    await rejects(
      gateCommand.main(["import", fixture(FP32), "-m", fixture(MODEL), "-o", imported, "--key-order", "x"]),
      BadFlagError,
    );
    await rejects(gateCommand.main(["info", fixture(MODEL)]), BadFileError); // a model is not a gate
    await rejects(gateCommand.main(["info", `${dir}/missing.gguf`]), BadFileError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

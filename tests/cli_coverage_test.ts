/**
 * The CLI end to end on stories260K (WebGPU, the default backend): the golden greedy story, `--profile`,
 * `--stop`, the window and sink KV policies, WG-KV's per-head admission table, `info --ctx`'s KV pool
 * against `run --verbose`'s, and loading progress on stderr only.
 *
 * @module
 */

import { deepEqual, equal, match, ok } from "node:assert/strict";
import { fixture, fixtureTest } from "./fixtures.ts";
import { runCli } from "./cli_process.ts";
import { Gpu } from "../src/gpu/device.ts";

const MODEL = "stories260K.gguf";
const GOLDEN = "stories260K.greedy.json";
const GATE_PT = "gate/stories260K-gate-fp32.pt";

/** stories260K's shape: 5 layers of 4 KV heads, head_dim 8 (a page of 16 tokens is 2·16·8·2 = 512 bytes). */
const LAYERS = 5;
const KV_HEADS = 4;
const PAGE_BYTES = 512;

/** The golden greedy continuation of BOS alone. */
interface Golden {
  input_tokens: number[];
  greedy_tokens: number[];
  greedy_text: string;
}

async function readGolden(): Promise<Golden> {
  return JSON.parse(await Deno.readTextFile(fixture(GOLDEN)));
}

/** Runs `wgkv run` on stories260K with `args`, expecting success, and parses its `--json` object. */
async function runJson(args: string[]) {
  const r = await runCli(["run", "-m", fixture(MODEL), "--json", ...args]);
  equal(r.code, 0, r.stderr);
  return { json: JSON.parse(r.stdout), stderr: r.stderr };
}

fixtureTest("cli: run greedy on the GPU reproduces the golden 200-token story exactly", [
  MODEL,
  GOLDEN,
], async () => {
  const golden = await readGolden();
  equal(golden.greedy_tokens.length, 200);
  // No prompt: the model starts from BOS alone, as the golden run did.
  const { json, stderr } = await runJson(["-n", "200", "--temp", "0"]);
  equal(json.backend, "webgpu", stderr);
  equal(json.prompt_tokens, golden.input_tokens.length);
  equal(json.generated_tokens, 200);
  equal(json.stop_reason, "length");
  deepEqual(json.generated, golden.greedy_tokens);
  equal(json.text, golden.greedy_text);
});

fixtureTest("cli: run --profile prints a per-kernel time table on stderr; stdout has only the text", [
  MODEL,
  GOLDEN,
], async () => {
  const golden = await readGolden();
  const steps = 8;
  const r = await runCli([
    "run",
    "-m",
    fixture(MODEL),
    "-p",
    "Once",
    "-n",
    String(steps),
    "--temp",
    "0",
    "--profile",
  ]);
  equal(r.code, 0, r.stderr);
  // stdout: the continuation of "Once" and a newline, nothing of the table.
  equal(r.stdout.split("\n").length, 2, r.stdout);
  ok(r.stdout.endsWith("\n") && golden.greedy_text.startsWith(`Once${r.stdout.slice(0, -1)}`), r.stdout);
  ok(!/calls|total|ms\/call|blk\./.test(r.stdout), r.stdout);
  const probe = await Gpu.create({ profile: true });
  const timed = probe.hasTimestamps;
  probe.destroy();
  if (!timed) {
    match(r.stderr, /^profile: .*timestamp-query/m);
    return;
  }
  const lines = r.stderr.split("\n");
  const header = lines.findIndex((l) => /^label\s+calls\s+total ms\s+ms\/call\s+share$/.test(l));
  ok(header >= 0, r.stderr);
  const rows: { label: string; calls: number; ms: number; share: number }[] = [];
  let i = header + 1;
  for (; i < lines.length; i++) {
    const m = /^(\S+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)%$/.exec(lines[i]);
    if (!m) break;
    rows.push({ label: m[1], calls: Number(m[2]), ms: Number(m[3]), share: Number(m[5]) });
  }
  const total = /^total\s+([\d.]+)$/.exec(lines[i]);
  ok(total, `no total line after the rows:\n${r.stderr}`);
  // Layers folded together: one row per kernel, blk.*.attention among them; every pass ends in `output`.
  const labels = rows.map((row) => row.label);
  ok(labels.includes("blk.*.attention") && labels.includes("output"), labels.join(", "));
  ok(!labels.some((l) => /^blk\.\d+\./.test(l)), labels.join(", "));
  equal(rows.find((row) => row.label === "output")!.calls, steps, r.stderr);
  equal(rows.find((row) => row.label === "blk.*.attention")!.calls, steps * LAYERS, r.stderr);
  const sumMs = rows.reduce((s, row) => s + row.ms, 0);
  ok(Math.abs(sumMs - Number(total[1])) < 0.01 * rows.length, r.stderr);
  const sumShare = rows.reduce((s, row) => s + row.share, 0);
  ok(Math.abs(sumShare - 100) <= 0.05 * rows.length + 0.01, r.stderr);
});

fixtureTest("cli: run --stop ends the text before the first stop string", [MODEL, GOLDEN], async () => {
  const golden = await readGolden();
  const story = golden.greedy_text;
  // Streaming: the text up to " named" (the stop string is not printed), then a newline.
  const plain = await runCli(["run", "-m", fixture(MODEL), "-n", "50", "--temp", "0", "--stop", "named"]);
  equal(plain.code, 0, plain.stderr);
  equal(plain.stdout, `${story.slice(0, story.indexOf("named"))}\n`);
  match(plain.stderr, /; stop: stop$/m);
  // Repeated: the earliest of the stop strings wins, also one that spans two tokens ("litt|le| gi|rl").
  const { json } = await runJson(["-n", "50", "--temp", "0", "--stop", "park", "--stop", "le gi"]);
  equal(json.stop_reason, "stop");
  equal(json.text, story.slice(0, story.indexOf("le gi")));
  ok(json.generated_tokens < 50);
  // Every generated token is listed, the one that completed the stop string included.
  equal(json.generated.length, json.generated_tokens);
  deepEqual(json.generated, golden.greedy_tokens.slice(0, json.generated_tokens));
});

/** Window 32 in prefill steps of 16: each (layer, KV head) holds a ring of ⌈(32 + 16 − 1) / 16⌉ = 3 pages. */
const WINDOW = 32;
const STEP = 16;
const RING_PAGES = Math.ceil((WINDOW + STEP - 1) / 16);
const ROWS = LAYERS * KV_HEADS;

fixtureTest("cli: run --kv window keeps only the local ring, and reports it", [MODEL, GOLDEN], async () => {
  const golden = await readGolden();
  const { json, stderr } = await runJson(
    ["-n", "100", "--temp", "0", "--ignore-eos", "--stats", "--kv", "window", "--window", String(WINDOW)]
      .concat(["-b", String(STEP)]),
  );
  const kv = json.kv;
  equal(kv.policy, "window");
  equal(kv.tokens, 100); // BOS and 99 generated tokens went through the model
  // Nothing outlives the window: no global tokens, nothing admitted.
  deepEqual(kv.global_tokens, new Array(ROWS).fill(0));
  deepEqual(kv.admitted_fraction, new Array(ROWS).fill(0));
  // Held: the ring only, at most window + step − 1 tokens a row (whole pages), whatever the context.
  const heldTokensPerRow = (kv.used_bytes / PAGE_BYTES / ROWS) * 16;
  equal(heldTokensPerRow, RING_PAGES * 16);
  ok(heldTokensPerRow < kv.tokens, String(heldTokensPerRow));
  equal(kv.full_bytes, ROWS * Math.ceil(kv.tokens / 16) * PAGE_BYTES);
  ok(kv.used_bytes < kv.full_bytes);
  // Tokens whose whole context fits the window are the full cache's.
  deepEqual(json.generated.slice(0, WINDOW), golden.greedy_tokens.slice(0, WINDOW));
  match(
    stderr,
    /^KV cache \(window\): 30\.00 KiB in use for 100 tokens; a full cache would use 70\.00 KiB \(57\.1% saved\)$/m,
  );
  match(stderr, /^admitted: 0\.0% of tokens/m);
});

fixtureTest("cli: run --kv sink --sinks N keeps the first N tokens beside the ring, and reports them", [
  MODEL,
  GOLDEN,
], async () => {
  const golden = await readGolden();
  const sinks = 4;
  const { json, stderr } = await runJson(
    ["-n", "100", "--temp", "0", "--ignore-eos", "--stats", "--kv", "sink", "--sinks", String(sinks)]
      .concat(["--window", String(WINDOW), "-b", String(STEP)]),
  );
  const kv = json.kv;
  equal(kv.policy, "sink");
  equal(kv.tokens, 100);
  // Every (layer, head) keeps exactly the sinks out of the window: N global tokens, N / tokens admitted.
  deepEqual(kv.global_tokens, new Array(ROWS).fill(sinks));
  deepEqual(kv.admitted_fraction, new Array(ROWS).fill(sinks / kv.tokens));
  // Held: the ring and the sinks' page(s): sinks + window (+ step) tokens a row, in whole pages.
  equal(kv.used_bytes, ROWS * (RING_PAGES + Math.ceil(sinks / 16)) * PAGE_BYTES);
  ok(kv.used_bytes < kv.full_bytes);
  deepEqual(json.generated.slice(0, WINDOW), golden.greedy_tokens.slice(0, WINDOW));
  match(stderr, /^KV cache \(sink\): 40\.00 KiB in use for 100 tokens; a full cache would use 70\.00 KiB/m);
  match(stderr, /^admitted: 4\.0% of tokens/m);
});

fixtureTest("cli: run --stats with --kv wgkv prints the admitted share of every layer and KV head", [
  MODEL,
  GATE_PT,
], async () => {
  const dir = await Deno.makeTempDir({ prefix: "wgkv_stats_" });
  try {
    const gate = `${dir}/gate.gguf`;
    const imp = await runCli(["gate", "import", fixture(GATE_PT), "--model", fixture(MODEL), "--out", gate]);
    equal(imp.code, 0, imp.stderr);
    const { json, stderr } = await runJson(
      ["-n", "100", "--temp", "0", "--stats", "--kv", "wgkv", "--gate", gate, "--window", String(WINDOW)]
        .concat(["-b", String(STEP), "--threshold", "0.6"]),
    );
    const fractions: number[] = json.kv.admitted_fraction;
    equal(fractions.length, ROWS);
    const summary = /^admitted: ([\d.]+)% of tokens on average over layers and KV heads$/m.exec(stderr);
    ok(summary, stderr);
    // One line per layer, in order, each with one percentage per KV head.
    const rows = [...stderr.matchAll(/^ {2}layer +(\d+):((?: +\d+%)+)$/gm)];
    equal(rows.length, LAYERS, stderr);
    const printed: number[] = [];
    rows.forEach((row, l) => {
      equal(Number(row[1]), l);
      const shares = row[2].trim().split(/ +/).map((p) => Number(p.slice(0, -1)) / 100);
      equal(shares.length, KV_HEADS, row[0]);
      printed.push(...shares);
    });
    // Fractions in [0, 1], per head (the random gate admits very different shares), each the JSON's
    // rounded to a percent; their mean is the summary's (to the rounding of the printed values).
    ok(printed.every((f) => f >= 0 && f <= 1), printed.join(" "));
    ok(new Set(printed).size > 1, printed.join(" "));
    printed.forEach((f, i) => equal(f, Number((100 * fractions[i]).toFixed(0)) / 100));
    const mean = fractions.reduce((a, b) => a + b, 0) / ROWS;
    equal(summary[1], (100 * mean).toFixed(1));
    const printedMean = printed.reduce((a, b) => a + b, 0) / ROWS;
    ok(Math.abs(printedMean - Number(summary[1]) / 100) <= 0.0055, `${printedMean} vs ${summary[1]}%`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

fixtureTest("cli: info --ctx prints the KV pool the GPU allocates; run --verbose prints the same pool", [
  MODEL,
], async () => {
  const model = fixture(MODEL);
  const info = async (args: string[]) => {
    const r = await runCli(["info", "-m", model, ...args]);
    equal(r.code, 0, r.stderr);
    return r.stdout;
  };
  // Default: the context the GPU loads (the model's 2048, at most 4096): the full cache's 2560 pages.
  const byDefault = JSON.parse(await info(["--json"]));
  deepEqual(byDefault.kv_pool, {
    policy: "full",
    context_tokens: 2048,
    pages: ROWS * 2048 / 16,
    page_tokens: 16,
    page_bytes: PAGE_BYTES,
    bytes: byDefault.kv_bytes_full_context_f16,
  });
  // A context that is not a whole number of pages: ⌈100 / 16⌉ = 7 pages a (layer, KV head).
  equal(JSON.parse(await info(["--json", "--ctx", "100"])).kv_pool.pages, ROWS * 7);
  match(
    await info(["-c", "100"]),
    /^KV pool: +140 pages of 16 tokens \(512 B each\), 70\.00 KiB for a context of 100 tokens/m,
  );
  const tooLong = await runCli(["info", "-m", model, "--ctx", "4096"]);
  equal(tooLong.code, 2, tooLong.stderr);
  equal(tooLong.stderr, "wgkv info: error: --ctx 4096 exceeds the model's trained context of 2048\n");
  // run --verbose: the pool it allocated is the one info prints for that context.
  const run = await runCli(["run", "-m", model, "-p", "Once", "-n", "2", "--temp", "0", "--verbose"]);
  equal(run.code, 0, run.stderr);
  const pool = /^KV cache: full, paged, (\d+) pages of 16 tokens, pool (.+) for (\d+) tokens$/m.exec(
    run.stderr,
  );
  ok(pool, run.stderr);
  const text = await info(["--ctx", pool[3]]);
  const line = /^KV pool: +(\d+) pages of 16 tokens \(512 B each\), (.+) for a context of (\d+) tokens/m.exec(
    text,
  );
  ok(line, text);
  deepEqual(line.slice(1, 4), pool.slice(1, 4));
});

fixtureTest("cli: loading progress goes to stderr, never to stdout", [MODEL, GOLDEN], async () => {
  const golden = await readGolden();
  for (const backend of ["auto", "cpu"]) {
    const r = await runCli([
      "run",
      "-m",
      fixture(MODEL),
      "-p",
      "Once",
      "-n",
      "6",
      "--temp",
      "0",
      "--backend",
      backend,
    ]);
    equal(r.code, 0, r.stderr);
    const where = backend === "cpu" ? "the CPU" : "";
    const loading = new RegExp(`^loading ${fixture(MODEL).replace(/[.]/g, "\\.")} on ${where}`, "m").exec(
      r.stderr,
    );
    const loaded = /^loaded in [\d.]+ s \((webgpu|cpu)\)$/m.exec(r.stderr);
    ok(loading && loaded && loading.index < loaded.index, r.stderr);
    equal(loaded[1], backend === "cpu" ? "cpu" : "webgpu");
    if (backend !== "cpu") match(r.stderr, /^uploading weights: [\d.]+ \S+ \/ [\d.]+ \S+$/m);
    // stdout: the continuation of "Once" and a newline, and nothing else.
    equal(r.stdout.split("\n").length, 2, r.stdout);
    ok(golden.greedy_text.startsWith(`Once${r.stdout.slice(0, -1)}`), r.stdout);
    ok(!/load|upload|GPU|prefill|decode/.test(r.stdout), r.stdout);
  }
});

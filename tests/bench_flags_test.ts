import { equal, match, ok } from "node:assert/strict";

/** Runs a bench script with `args` and returns its exit code, stdout and stderr. */
async function runBench(
  script: string,
  args: string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", new URL(`../bench/${script}`, import.meta.url).pathname, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Runs `bench.ts` on the tiny shape with `args`, its results in a temporary file (removed afterwards). */
async function runTinyBench(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await Deno.makeTempFile({ suffix: ".json" });
  try {
    return await runBench("bench.ts", ["--shapes", "tiny", ...args, "--out", out, "--fresh"]);
  } finally {
    await Deno.remove(out).catch(() => {});
  }
}

Deno.test("bench scripts: --help prints the usage; a bad flag or value is one line and exit 2", async () => {
  for (const script of ["bench.ts", "attention.ts", "matmul.ts", "matvec.ts", "dispatch.ts"]) {
    const help = await runBench(script, ["--help"]);
    equal(help.code, 0, help.stderr);
    match(help.stdout, /usage:/, `${script} --help`);
    const bad = await runBench(script, ["--no-such-flag"]);
    equal(bad.code, 2, bad.stderr);
    const lines = bad.stderr.trim().split("\n");
    equal(lines.length, 1, `${script}: expected one line, got:\n${bad.stderr}`);
    match(lines[0], /--no-such-flag/);
    ok(!/\bat \S+:\d+:\d+/.test(bad.stderr), `${script}: no stack trace`);
  }
  const shape = await runBench("bench.ts", ["--shapes", "llama-9b"]);
  equal(shape.code, 2, shape.stderr);
  match(shape.stderr.trim(), /^bench: --shapes: unknown shape llama-9b$/);
  const tuning = await runBench("bench.ts", ["--matvec-tuning", "{not json"]);
  equal(tuning.code, 2, tuning.stderr);
  match(tuning.stderr.trim(), /^bench: --matvec-tuning is not JSON/);
  const direct = await runBench("bench.ts", ["--direct-keys=-1"]);
  equal(direct.code, 2, direct.stderr);
  match(direct.stderr.trim(), /^bench: --direct-keys must be a non-negative integer, got -1$/);
});

Deno.test("bench: a KV prompt past the model's context is refused before any prefill", async () => {
  const r = await runTinyBench(["--types", "f16", "--kv", "full", "--kv-prompts", "1000000"]);
  equal(r.code, 2, r.stderr);
  const last = r.stderr.trim().split("\n").at(-1)!;
  match(last, /^bench: --kv-prompts 1000000: with \d+ decode tokens it exceeds tiny's context of \d+/);
  ok(!/prefill/.test(r.stderr), r.stderr);
});

Deno.test("bench: a flag value the kernels refuse (decode attention's key lanes) is one line, not a stack trace", async () => {
  const lanes = await runTinyBench([
    "--types",
    "q4_k_m",
    "--prompts",
    "",
    "--depths",
    "0",
    "--decode-key-lanes",
    "4",
  ]);
  equal(lanes.code, 2, lanes.stderr);
  match(
    lanes.stderr.trim().split("\n").at(-1)!,
    /^bench: error: .*keyLanes must be an integer in \[8, \d+\], got 4$/,
  );
  ok(!/\bat \S+:\d+:\d+/.test(lanes.stderr), lanes.stderr);
});

Deno.test("bench: --ablate-decode-ops leaves those roles out of decode (a row of its own); an unknown role is one line", async () => {
  const run = await runTinyBench([
    "--types",
    "q8_0",
    "--prompts",
    "",
    "--depths",
    "0",
    "--ablate-decode-ops",
    "attn_output,ffn_down",
  ]);
  equal(run.code, 0, run.stderr);
  match(run.stdout, /\| tiny \| q8_0 \| decode-skip-attn_output\+ffn_down \| 0 \|/);
  // Decode takes 1 + 5 · layers + 2 dispatches per token; the two roles left out take 2 · layers.
  const plain = await runTinyBench(["--types", "q8_0", "--prompts", "", "--depths", "0"]);
  equal(plain.code, 0, plain.stderr);
  const dispatches = (stderr: string) => Number(/ (\d+) dispatches\/token/.exec(stderr)?.[1]);
  const all = dispatches(plain.stderr);
  const layers = (all - 3) / 5;
  ok(Number.isInteger(layers) && layers > 0, `${all} dispatches per token`);
  equal(dispatches(run.stderr), all - 2 * layers);
  const bad = await runBench("bench.ts", ["--ablate-decode-ops", "attn_output,lm_head"]);
  equal(bad.code, 2, bad.stderr);
  match(bad.stderr.trim(), /^bench: --ablate-decode-ops: unknown role lm_head \(attn_qkv, attention, /);
});

Deno.test("bench dispatch: --quick times every way of recording and writes them as they come", async () => {
  const out = await Deno.makeTempFile({ suffix: ".json" });
  try {
    const run = await runBench("dispatch.ts", ["--quick", "--values", "64", "--count", "4", "--out", out]);
    equal(run.code, 0, run.stderr);
    const rows = JSON.parse(await Deno.readTextFile(out)).rows as { mode: string; us: number }[];
    equal(
      rows.map((r) => r.mode).join(","),
      "chain,independent,passes,submits,probe,pipelines,shared,bindings,code,code-pipelines",
    );
    for (const r of rows) ok(Number.isFinite(r.us), `${r.mode}: ${r.us} µs`);
    match(run.stdout, /^mode\s+values\s+workgroups\s+µs\/dispatch$/m);
  } finally {
    await Deno.remove(out).catch(() => {});
  }
});

Deno.test("bench:matvec --interleave times the shapes' ops taking turns and writes the round", async () => {
  const out = await Deno.makeTempFile({ suffix: ".json" });
  try {
    const args = ["--quick", "--types", "Q4_K", "--interleave", "--out", out];
    const r = await runBench("matvec.ts", [...args, "--shapes", "tiny.matvec,tiny.down"]);
    equal(r.code, 0, r.stderr);
    match(
      r.stdout,
      /^interleaved tiny\.matvec \+ tiny\.down Q4_K \{\}: [\d.]+ µs per round against [\d.]+ µs alone$/m,
    );
    const saved = JSON.parse(await Deno.readTextFile(out));
    equal(saved.interleaved.length, 1);
    ok(saved.interleaved[0].us > 0 && saved.interleaved[0].aloneUs > 0, JSON.stringify(saved.interleaved));
    const one = await runBench("matvec.ts", [...args, "--shapes", "tiny.matvec"]);
    equal(one.code, 2, one.stderr);
    match(one.stderr.trim(), /^bench: --interleave needs one --tokens value and at least two shapes$/);
  } finally {
    await Deno.remove(out).catch(() => {});
  }
});

Deno.test("bench: --repeat-decode-ops and --ablate-decode-ops refuse an unknown role in one line", async () => {
  for (const flag of ["--repeat-decode-ops", "--ablate-decode-ops"]) {
    const r = await runBench("bench.ts", [flag, "attn_qkv,lm_head"]);
    equal(r.code, 2, r.stderr);
    match(r.stderr.trim(), new RegExp(`^bench: ${flag}: unknown role lm_head \\(`));
  }
  const source = await runBench("bench.ts", [
    "--repeat-decode-ops",
    "attn_output",
    "--repeat-decode-source",
    "far",
  ]);
  equal(source.code, 2, source.stderr);
  match(source.stderr.trim(), /^bench: --repeat-decode-source must be same-layer or far-layer, got far$/);
  const alone = await runBench("bench.ts", ["--repeat-decode-source", "far-layer"]);
  equal(alone.code, 2, alone.stderr);
  match(alone.stderr.trim(), /^bench: --repeat-decode-source needs --repeat-decode-ops$/);
});

Deno.test("bench:attention --wgkv-rate times decode over a ragged WG-KV cache filled by the model's kernels", async () => {
  const out = await Deno.makeTempFile({ suffix: ".json" });
  try {
    const args = ["--head-dim", "16", "--kv-heads", "2", "--q-heads", "4", "--prefill", "", "--splits", "4"];
    const r = await runBench("attention.ts", [
      ...args,
      "--decode-depths",
      "1500",
      "--wgkv-rate",
      "0.2",
      "--out",
      out,
    ]);
    equal(r.code, 0, r.stderr);
    // Ring of 768 slots (window 256 and a 512-token step) and a fifth of the other 732 tokens: ~61%.
    const row = r.stdout.match(/^decode +@ 1500 +wgkv ([\d.]+)% splits 4 steps default +[\d.]+ µs/m);
    ok(row, r.stdout);
    const share = Number(row[1]);
    ok(share > 55 && share < 67, `rows hold ${share}% of the depth`);
    const saved = JSON.parse(await Deno.readTextFile(out));
    ok(saved.rows.some((x: { variant: string }) => x.variant.startsWith("wgkv")), JSON.stringify(saved.rows));
    const bad = await runBench("attention.ts", ["--wgkv-rate", "1.5"]);
    equal(bad.code, 2, bad.stderr);
    match(bad.stderr.trim(), /^bench: --wgkv-rate must be in \(0, 1\], got 1\.5$/);
  } finally {
    await Deno.remove(out).catch(() => {});
  }
});

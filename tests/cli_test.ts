import { deepEqual, equal, match, ok } from "node:assert/strict";
import { fixture, fixtureTest } from "./fixtures.ts";
import { runCli } from "./cli_process.ts";
import { Gpu } from "../src/gpu/device.ts";

function assertOneLineError(r: { code: number; stderr: string }, code: number, pattern: RegExp): void {
  equal(r.code, code, r.stderr);
  const lines = r.stderr.trim().split("\n");
  equal(lines.length, 1, `expected one line, got:\n${r.stderr}`);
  match(lines[0], pattern);
  ok(!/\bat \S+:\d+:\d+/.test(r.stderr), "no stack trace");
}

Deno.test("cli: --help lists every command; unknown command and flags are one-line errors", async () => {
  const help = await runCli(["--help"]);
  equal(help.code, 0);
  for (const c of ["run", "chat", "info", "gpu", "tokenize", "synth", "demo", "gate", "batch"]) {
    match(help.stdout, new RegExp(`\\b${c}\\b`));
  }
  assertOneLineError(await runCli(["frobnicate"]), 2, /unknown command "frobnicate"/);
  assertOneLineError(await runCli(["run", "--bogus"]), 2, /unknown flag --bogus/);
  assertOneLineError(
    await runCli(["run", "-m", "x.gguf", "-n", "many"]),
    2,
    /--n-predict: "many" is not an integer/,
  );
  for (const c of ["run", "chat", "info", "gpu", "tokenize", "synth", "demo", "gate", "batch"]) {
    equal((await runCli([c, "--help"])).code, 0);
  }
});

Deno.test("cli: gpu describes the device (features, subgroups, matrix units, limits) as text or JSON", async () => {
  const text = await runCli(["gpu"]);
  equal(text.code, 0, text.stderr);
  for (
    const key of ["adapter", "backends", "shader-f16", "subgroups", "matrix units", "workgroups", "features"]
  ) {
    match(text.stdout, new RegExp(`^${key}: `, "m"));
  }
  const json = await runCli(["gpu", "--json"]);
  equal(json.code, 0, json.stderr);
  const info = JSON.parse(json.stdout);
  equal(typeof info.adapter, "string");
  equal(typeof info.shader_f16, "boolean");
  equal(typeof info.backends, "string");
  ok(info.limits.max_compute_workgroup_storage_size >= 16384, JSON.stringify(info.limits));
  // The matrix units were probed (or the reason why not is given).
  ok(info.matrix_units !== null || info.matrix_units_note.length > 0, json.stdout);
  // Every feature the adapter offers, sorted; shader-f16 among them when the device has it.
  ok(Array.isArray(info.adapter_features), json.stdout);
  equal(info.adapter_features.join(","), [...info.adapter_features].sort().join(","));
  if (info.shader_f16) ok(info.adapter_features.includes("shader-f16"), json.stdout);
  assertOneLineError(await runCli(["gpu", "--bogus"]), 2, /unknown flag --bogus/);
});

Deno.test("cli: a missing model file is a one-line error naming it", async () => {
  assertOneLineError(await runCli(["info", "/nonexistent/model.gguf"]), 1, /\/nonexistent\/model\.gguf/);
  assertOneLineError(
    await runCli(["run", "-m", "/nonexistent/m.gguf", "-p", "hi"]),
    1,
    /\/nonexistent\/m\.gguf/,
  );
});

fixtureTest("cli: info describes stories260K", ["stories260K.gguf"], async () => {
  const r = await runCli(["info", "--json", fixture("stories260K.gguf")]);
  equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  equal(j.architecture, "llama");
  equal(j.tensors, 48);
  equal(j.vocab, 512);
  equal(j.hparams.nLayer, 5);
  // -m as the other commands take the model: the same description; two models are a one-line error.
  const viaFlag = await runCli(["info", "--json", "-m", fixture("stories260K.gguf")]);
  equal(viaFlag.code, 0, viaFlag.stderr);
  equal(viaFlag.stdout, r.stdout);
  assertOneLineError(
    await runCli(["info", "-m", fixture("stories260K.gguf"), fixture("stories260K.gguf")]),
    2,
    /exactly one MODEL/,
  );
});

fixtureTest("cli: sampling values out of range are one-line errors before the model loads", [
  "stories260K.gguf",
], async () => {
  const model = fixture("stories260K.gguf");
  const cases: [string, string, RegExp][] = [
    ["--top-p", "2", /^wgkv run: error: --top-p: 2 is not valid \(want in \(0, 1\]\)$/],
    ["--min-p", "1", /^wgkv chat: error: --min-p: 1 is not valid \(want in \[0, 1\)\)$/],
    ["--repeat-penalty", "0", /^wgkv batch: error: --repeat-penalty: 0 is not valid \(want a number > 0\)$/],
  ];
  const commands = [["run", "-p", "Once"], ["chat"], ["batch", model]];
  for (const [i, [flag, value, pattern]] of cases.entries()) {
    // One line on stderr: nothing was loaded ("loaded in …" would be a second line).
    assertOneLineError(await runCli([...commands[i], "-m", model, `${flag}=${value}`]), 2, pattern);
  }
});

fixtureTest("cli: run -n -1 generates until the context is full", ["stories260K.gguf"], async () => {
  const r = await runCli([
    "run",
    "-m",
    fixture("stories260K.gguf"),
    ..."-p Once -n -1 --temp 0 --ignore-eos -c 40 --json".split(" "),
  ]);
  equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  equal(out.stop_reason, "context");
  equal(out.prompt_tokens + out.generated_tokens, 41, r.stdout); // the last token is generated, not fed
});

fixtureTest(
  "cli: run refuses a prompt that cannot fit before loading the model",
  ["stories260K.gguf"],
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "wgkv_ctx_" });
    try {
      const long = `${dir}/long.txt`;
      await Deno.writeTextFile(long, "Once upon a time there was a little dog. ".repeat(300));
      const model = fixture("stories260K.gguf");
      // One line on stderr: nothing was loaded ("loaded in …" would be a second line).
      assertOneLineError(
        await runCli(["run", "-m", model, "-f", long]),
        1,
        /^wgkv run: error: context overflow: the prompt's \d+ tokens exceed the model's trained context of 2048$/,
      );
      assertOneLineError(
        await runCli(["run", "-m", model, "-p", "Once upon a time there was a little dog.", "-c", "5"]),
        1,
        /^wgkv run: error: context overflow: the prompt's \d+ tokens exceed --ctx 5$/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

fixtureTest("cli: Ctrl-C stops run's reply, prints its statistics and exits with 130", [
  "stories260K.gguf",
], async () => {
  if (Deno.build.os === "windows") return;
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL("../cli.ts", import.meta.url).pathname,
      "run",
      "-m",
      fixture("stories260K.gguf"),
      ..."-p Once -n -1 --temp 0 --ignore-eos".split(" "),
    ],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
  }).spawn();
  const reader = child.stdout.getReader();
  let stdout = new TextDecoder().decode((await reader.read()).value); // the reply has started
  child.kill("SIGINT");
  for (let r = await reader.read(); !r.done; r = await reader.read()) {
    stdout += new TextDecoder().decode(r.value);
  }
  const status = await child.status;
  const stderr = new TextDecoder().decode(await new Response(child.stderr).arrayBuffer());
  equal(status.code, 130, stderr);
  match(stderr, /\(stopping the reply; Ctrl-C again quits\)/);
  match(stderr, /decode: \d+ tokens, [\d.]+ tok\/s; stop: abort$/m);
  ok(stdout.length > 0 && stdout.endsWith("\n"), stdout);
});

/**
 * Runs the CLI on the tiny synthetic model on the CPU reference with a prompt of ~1800 tokens (seconds to
 * prefill, progress each second), sends Ctrl-C at its first progress line and then writes `after` to its
 * standard input (`command` chat) and returns what it did and how long it went on after Ctrl-C.
 */
async function stopDuringPrefill(command: "run" | "chat" | "batch", after = "") {
  const dir = await Deno.makeTempDir({ prefix: "wgkv_prefill_stop_" });
  try {
    const model = `${dir}/tiny.gguf`;
    equal((await runCli(["synth", "--type", "f32", "--out", model])).code, 0);
    const words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran"];
    const prompt = Array.from({ length: 900 }, (_, i) => words[(i * 7) % 9]).join(" ");
    await Deno.writeTextFile(`${dir}/prompt.txt`, prompt);
    await Deno.writeTextFile(`${dir}/again.txt`, prompt);
    const input = command === "run"
      ? ["-f", `${dir}/prompt.txt`]
      : command === "batch"
      ? [`${dir}/prompt.txt`, `${dir}/again.txt`, "--out", `${dir}/out.jsonl`]
      : [];
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        ..."run -A".split(" "),
        new URL("../cli.ts", import.meta.url).pathname,
        ...[command, "-m", model, "--backend", "cpu", ...input, "-n", "4", "--temp", "0"],
      ],
      stdin: command === "chat" ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    const writer = command === "chat" ? child.stdin.getWriter() : undefined;
    await writer?.write(new TextEncoder().encode(prompt + "\n"));
    const reader = child.stderr.getReader();
    let stderr = "";
    while (!/prefill: \d+ \/ \d+ tokens/.test(stderr)) {
      const r = await reader.read();
      if (r.done) break;
      stderr += new TextDecoder().decode(r.value);
    }
    const sent = performance.now();
    child.kill("SIGINT");
    let stoppedMs = Infinity;
    if (writer) {
      // Wait until the stopped turn has said so (for at most 20 s), then send the next message.
      let timer: ReturnType<typeof setTimeout> | undefined;
      const deadline = new Promise<{ done: true }>((resolve) => {
        timer = setTimeout(() => resolve({ done: true }), 20_000);
      });
      while (!stderr.includes("(message withdrawn)")) {
        const r = await Promise.race([reader.read(), deadline]);
        if (r.done) break;
        stderr += new TextDecoder().decode(r.value);
      }
      clearTimeout(timer);
      stoppedMs = performance.now() - sent;
      await writer.write(new TextEncoder().encode(after));
      await writer.close();
    }
    for (let r = await reader.read(); !r.done; r = await reader.read()) {
      stderr += new TextDecoder().decode(r.value);
    }
    const status = await child.status;
    if (!writer) stoppedMs = performance.now() - sent;
    const stdout = new TextDecoder().decode(await new Response(child.stdout).arrayBuffer());
    const total = Number(/prefill: \d+ \/ (\d+) tokens/.exec(stderr)?.[1]);
    const results = command === "batch" ? await Deno.readTextFile(`${dir}/out.jsonl`) : "";
    return { code: status.code, stdout, stderr, stoppedMs, total, results };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The statistics line of a turn stopped during its prefill: the prompt tokens that ran. */
const STOPPED_STATS =
  /^prefill: (\d+) tokens in [\d.]+ s \([\d.]+ tok\/s\); decode: 0 tokens, 0\.0 tok\/s; stop: abort$/m;

Deno.test("cli: Ctrl-C during a long prompt's prefill stops run at once, with statistics and exit 130", async () => {
  if (Deno.build.os === "windows") return;
  const r = await stopDuringPrefill("run");
  equal(r.code, 130, r.stderr);
  ok(r.stoppedMs < 5000, `the prefill went on for ${r.stoppedMs} ms after Ctrl-C`);
  const ran = Number(STOPPED_STATS.exec(r.stderr)?.[1]);
  ok(ran > 0 && ran < r.total, `stopped after ${ran} of ${r.total} tokens:\n${r.stderr}`);
  equal(r.stdout, "\n");
});

Deno.test("cli: Ctrl-C during a chat message's prefill withdraws the message; the chat goes on", async () => {
  if (Deno.build.os === "windows") return;
  const r = await stopDuringPrefill("chat", "hello\n");
  equal(r.code, 0, r.stderr);
  ok(r.stoppedMs < 5000, `the prefill went on for ${r.stoppedMs} ms after Ctrl-C`);
  ok(STOPPED_STATS.test(r.stderr), r.stderr);
  // The next turn runs only its own message: the withdrawn one is not in the transcript.
  const next = /\(message withdrawn\)\n(?:.*\n)*?prefill: (\d+) tokens .*decode: 4 tokens/.exec(r.stderr);
  ok(next && Number(next[1]) < 50, r.stderr);
});

Deno.test("cli: Ctrl-C during batch stops it at once, recording no unfinished document", async () => {
  if (Deno.build.os === "windows") return;
  const r = await stopDuringPrefill("batch");
  equal(r.code, 130, r.stderr);
  ok(r.stoppedMs < 5000, `the prefill went on for ${r.stoppedMs} ms after Ctrl-C`);
  match(r.stderr, /prompt\.txt: prefill: \d+ \/ \d+ tokens/);
  match(r.stderr, /\(stopping the batch; Ctrl-C again quits\)/);
  match(r.stderr, /^batch: stopped; 0 of 2 documents done \(the same command resumes from .*out\.jsonl\)$/m);
  equal(r.results, "");
});

fixtureTest("cli: run -f - reads the prompt from standard input", ["stories260K.gguf"], async () => {
  const args = ["run", "-m", fixture("stories260K.gguf"), ..."--backend cpu -n 8 --temp 0".split(" ")];
  const piped = await runCli([...args, "-f", "-"], {}, "Once upon a time");
  const given = await runCli([...args, "-p", "Once upon a time"]);
  equal(piped.code, 0, piped.stderr);
  equal(piped.stdout, given.stdout);
  ok(piped.stdout.trim().length > 0, piped.stdout);
});

fixtureTest("cli: tokenize --ids prints a JSON array with BOS", ["stories260K.gguf"], async () => {
  const r = await runCli(["tokenize", "-m", fixture("stories260K.gguf"), "--ids", "Once upon a time"]);
  equal(r.code, 0, r.stderr);
  const ids = JSON.parse(r.stdout);
  ok(Array.isArray(ids) && ids.length > 1);
  equal(ids[0], 1);
});

fixtureTest("cli: run greedy on the CPU continues the golden story", [
  "stories260K.gguf",
  "stories260K.greedy.json",
], async () => {
  const golden = JSON.parse(await Deno.readTextFile(fixture("stories260K.greedy.json")));
  const r = await runCli([
    "run",
    "-m",
    fixture("stories260K.gguf"),
    "--backend",
    "cpu",
    "-n",
    "20",
    "--temp",
    "0",
    "--json",
  ]);
  equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout);
  const tokens: number[] = golden.greedy_tokens;
  deepEqual(j.generated.slice(0, 20), tokens.slice(0, 20));
});

fixtureTest(
  "cli: chat answers each piped message and keeps the cache across turns",
  ["stories260K.gguf"],
  async () => {
    const out = await runCli(
      ["chat", "-m", fixture("stories260K.gguf"), "-n", "8", "--temp", "0"],
      {},
      "Tell me a story\n/reset\nAnother one\nAnd more\n",
    );
    const stderr = out.stderr;
    equal(out.code, 0, stderr);
    const replies = out.stdout.split("\n").filter((l) => l.length > 0);
    equal(replies.length, 3, out.stdout);
    match(stderr, /conversation reset/);
    // Three turns, each with its own prefill; only the third continues a conversation, and it reuses at
    // least the whole prompt of the second turn from the cache.
    const prefills = [...stderr.matchAll(/prefill: (\d+) tokens/g)].map((m) => Number(m[1]));
    equal(prefills.length, 3);
    const reused = [...stderr.matchAll(/\((\d+) tokens of the conversation reused/g)].map((m) =>
      Number(m[1])
    );
    equal(reused.length, 1, stderr);
    ok(reused[0] >= prefills[1], `reused ${reused[0]} of a ${prefills[1]}-token first prompt`);
  },
);

fixtureTest(
  "cli: chat drops its oldest messages when the conversation outgrows the context, and goes on",
  ["stories260K.gguf"],
  async () => {
    const out = await runCli(
      ["chat", "-m", fixture("stories260K.gguf"), "-n", "20", "--temp", "0", "-c", "64"],
      {},
      "Hello there my friend\nTell me a story about a dog\n" + "a dog ".repeat(40) +
        "\nAnd another one please\n",
    );
    equal(out.code, 0, out.stderr);
    // Three replies: the message too long for the context is refused and the chat goes on.
    equal(out.stdout.split("\n").filter((l) => l.length > 0).length, 3, out.stdout);
    match(
      out.stderr,
      /the conversation outgrew the context of 64 tokens: its \d+ oldest message\(s\) dropped/,
    );
    match(
      out.stderr,
      /chat: this message takes \d+ tokens with the chat layout, more than the context of 64/,
    );
    ok(!out.stderr.includes("context overflow"), out.stderr);
  },
);

fixtureTest("cli: run --stats says when the local ring outweighs a full cache of a short context", [
  "stories260K.gguf",
], async () => {
  const args = ["run", "-m", fixture("stories260K.gguf"), "--kv", "random", "--stats", "--temp", "0"];
  const short = await runCli([...args, "-p", "Once", "-n", "3"]);
  equal(short.code, 0, short.stderr);
  match(short.stderr, /% more\)\n {2}\(each layer and KV head holds its local ring of \d+ tokens/);
  // A window of 32 in steps of 16: 48 ring tokens, which 200 tokens outgrow.
  const long = await runCli([
    ...args,
    "-p",
    "Once",
    "-n",
    "200",
    "--ignore-eos",
    "--window",
    "32",
    "-b",
    "16",
  ]);
  equal(long.code, 0, long.stderr);
  match(long.stderr, /% saved\)/);
  ok(!long.stderr.includes("local ring of"), long.stderr);
});

fixtureTest("cli: run --kv wgkv with an imported gate reports admissions and KV bytes that agree", [
  "stories260K.gguf",
  "gate/stories260K-gate-fp32.pt",
], async () => {
  const dir = await Deno.makeTempDir();
  try {
    const gate = `${dir}/gate.gguf`;
    const imp = await runCli([
      "gate",
      "import",
      fixture("gate/stories260K-gate-fp32.pt"),
      "--model",
      fixture("stories260K.gguf"),
      "--out",
      gate,
    ]);
    equal(imp.code, 0, imp.stderr);
    const args = [
      "run",
      "-m",
      fixture("stories260K.gguf"),
      "-n",
      "100",
      "--temp",
      "0",
      "--json",
      "--kv",
      "wgkv",
    ];
    const r = await runCli([...args, "--gate", gate, "--window", "32", "-b", "16", "--threshold", "0.6"]);
    equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    ok(j.text.length > 0);
    const kv = j.kv;
    equal(kv.policy, "wgkv");
    equal(kv.admitted_fraction.length, 5 * 4);
    ok(kv.admitted_fraction.some((f: number) => f > 0) && kv.admitted_fraction.some((f: number) => f < 1));
    // Bytes: per (layer, head) the ring (⌈(32 + 16 − 1) / 16⌉ = 3 pages) plus its global pages, 512 B a page.
    const pages = kv.global_tokens.reduce((s: number, g: number) => s + 3 + Math.ceil(g / 16), 0);
    equal(kv.used_bytes, pages * 512);
    equal(kv.full_bytes, 20 * Math.ceil(kv.tokens / 16) * 512);
    // Global tokens are the admitted ones that left the ring: never more than the admitted count.
    kv.global_tokens.forEach((g: number, i: number) =>
      ok(g <= Math.round(kv.admitted_fraction[i] * kv.tokens))
    );
    // Mistakes are one-line flag errors.
    assertOneLineError(await runCli(args), 2, /--kv wgkv needs --gate/);
    assertOneLineError(
      await runCli([...args, "--gate", gate, "--backend", "cpu"]),
      2,
      /needs the WebGPU backend/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

fixtureTest(
  "cli: a model the GPU kernels cannot take (head_dim 4) runs on the CPU in auto mode, and is a clear error with --backend webgpu",
  ["llama-2-tiny-random.gguf"],
  async () => {
    const model = fixture("llama-2-tiny-random.gguf");
    const auto = await runCli(["run", "-m", model, "-p", "Hello", "-n", "4", "--temp", "0", "--json"]);
    equal(auto.code, 0, auto.stderr);
    match(auto.stderr, /do not support this model .*head_dim.*running on the CPU reference instead/);
    equal(JSON.parse(auto.stdout).backend, "cpu");
    // Loading progress comes first; the error is the last line, without a stack trace.
    const gpu = await runCli(["run", "-m", model, "-p", "Hello", "-n", "4", "--backend", "webgpu"]);
    equal(gpu.code, 1, gpu.stderr);
    match(gpu.stderr.trim().split("\n").at(-1)!, /^wgkv run: error: .*head_dim must be a multiple of 8/);
    ok(!/\bat \S+:\d+:\d+/.test(gpu.stderr), "no stack trace");
  },
);

Deno.test("cli: run --f32-prefill / --f32-decode / --coop-prefill on a quantised model generates like the default", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const model = `${dir}/tiny-q4_k_m.gguf`;
    const synth = await runCli(["synth", "--shape", "tiny", "--type", "q4_k_m", "--out", model]);
    equal(synth.code, 0, synth.stderr);
    const args = ["run", "-m", model, "-p", "Hello there", "-n", "4", "--temp", "0", "--json"];
    const f32 = await runCli([...args, "--f32-prefill"]);
    equal(f32.code, 0, f32.stderr);
    const f32Decode = await runCli([...args, "--f32-decode"]);
    equal(f32Decode.code, 0, f32Decode.stderr);
    equal(JSON.parse(f32Decode.stdout).generated.length, 4);
    const byDefault = await runCli(args);
    equal(byDefault.code, 0, byDefault.stderr);
    equal(JSON.parse(f32.stdout).generated.length, 4);
    equal(JSON.parse(byDefault.stdout).generated.length, 4);
    // Prefill on cooperative matrices: runs where the GPU has working ones, else one line naming the flag.
    const coop = await runCli([...args, "--coop-prefill"]);
    const probe = await Gpu.create({ coopMatrix: true });
    const hasCoop = probe.coopMatrix !== undefined;
    probe.destroy();
    if (hasCoop) {
      equal(coop.code, 0, coop.stderr);
      equal(JSON.parse(coop.stdout).generated.length, 4);
    } else {
      // (after the loading line)
      equal(coop.code, 2, coop.stderr);
      match(
        coop.stderr.trim().split("\n").at(-1)!,
        /^wgkv run: error: --coop-prefill \(coopPrefill\): this GPU has no/,
      );
      ok(!/\bat \S+:\d+:\d+/.test(coop.stderr), "no stack trace");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

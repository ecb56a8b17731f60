/**
 * Bad input to the real CLI, one family per test: each case must end in exactly one line on stderr of the
 * form `wgkv <command>: error: <message>` that names the file or flag, the exit status 1 (2 for flags), no
 * stack trace and nothing on stdout, within {@link CASE_LIMIT_MS}. The broken files are made in a temporary
 * folder from stories260K. The CLI is spawned as in `cli_process.ts`, with a time limit.
 */
import { equal, ok } from "node:assert/strict";
import { fixture, fixtureTest } from "./fixtures.ts";
import { runCli } from "./cli_process.ts";
import { openGGUF } from "../src/gguf/reader.ts";
import { type MetadataEntry, metadataOf, str, u32, u64, writeGGUF } from "../src/gguf/writer.ts";

const MODEL = "stories260K.gguf";
const VOCAB_ONLY = "vocab/ggml-vocab-llama-spm.gguf";
const CHECKPOINT = "gate/stories260K-gate-fp32.pt";
const OTHER_MODEL = "llama-2-tiny-random.gguf";

/** One CLI call that must fail: its arguments, stdin, exit status and what the error line must say. */
interface BadCase {
  args: string[];
  code: 1 | 2;
  error: RegExp;
  stdin?: string;
}

/** Longest a failing case may take: a bad file must fail fast (a FIFO or an absurd shape must not hang). */
const CASE_LIMIT_MS = 30_000;

const CLI = new URL("../cli.ts", import.meta.url).pathname;

/** {@link runCli}, killing the process after `limitMs` (then `signal` says so). */
async function runCliWithin(
  args: string[],
  stdin: string | undefined,
  limitMs: number,
): Promise<{ code: number; signal: Deno.Signal | null; stdout: string; stderr: string }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
    signal: AbortSignal.timeout(limitMs),
  }).spawn();
  if (stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(stdin)).catch(() => {});
    await writer.close().catch(() => {});
  }
  const out = await child.output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    signal: out.signal,
    stdout: dec.decode(out.stdout),
    stderr: dec.decode(out.stderr),
  };
}

/** Runs the cases two at a time and checks each against the rule; failures name the arguments. */
async function expectErrors(cases: BadCase[]): Promise<void> {
  const queue = [...cases];
  const failures: string[] = [];
  const worker = async () => {
    for (let c = queue.shift(); c !== undefined; c = queue.shift()) {
      const r = await runCliWithin(c.args, c.stdin, CASE_LIMIT_MS);
      const lines = r.stderr.split("\n").filter((l) => l.trim() !== "");
      const errors = lines.filter((l) => /error/i.test(l));
      const last = lines.at(-1) ?? "";
      const problems = [
        r.signal !== null && `killed by ${r.signal} after ${CASE_LIMIT_MS} ms (a hang)`,
        r.code !== c.code && `exit ${r.code}, expected ${c.code}`,
        /^\s+at |Uncaught|Stack backtrace/m.test(r.stderr) && "a stack trace",
        r.stdout !== "" && `stdout ${JSON.stringify(r.stdout.slice(0, 80))}`,
        errors.length !== 1 && `${errors.length} error lines`,
        !/^wgkv [a-z ]+: error: /.test(last) && "no `wgkv <command>: error:` line last",
        !c.error.test(last) && `error not matching ${c.error}`,
      ].filter((p) => p !== false);
      if (problems.length > 0) {
        failures.push(`wgkv ${c.args.join(" ")}: ${problems.join("; ")}\n  stderr: ${r.stderr.trim()}`);
      }
    }
  };
  await Promise.all([worker(), worker()]);
  ok(failures.length === 0, failures.join("\n"));
}

/** `re` for a path, its regex characters escaped. */
const lit = (text: string) => new RegExp(text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));

/** A copy of GGUF `src` at `out` with metadata replaced or (undefined) removed, tensors dropped or reshaped. */
async function rewrite(
  src: string,
  out: string,
  change: {
    meta?: Record<string, MetadataEntry | undefined>;
    drop?: string[];
    reshape?: Record<string, number[]>;
  },
): Promise<string> {
  const file = await openGGUF(src);
  try {
    const metadata = metadataOf(file);
    for (const [key, entry] of Object.entries(change.meta ?? {})) {
      if (entry === undefined) delete metadata[key];
      else metadata[key] = entry;
    }
    const tensors = [];
    for (const t of file.tensors.filter((t) => !change.drop?.includes(t.name))) {
      const shape = change.reshape?.[t.name] ?? t.shape;
      const bytes = await file.readBytes(t);
      const length = (shape.reduce((a, b) => a * b, 1) * t.byteLength) / t.nElements;
      const data = new Uint8Array(length);
      data.set(bytes.subarray(0, Math.min(length, bytes.length)));
      tensors.push({ name: t.name, type: t.type, shape, data });
    }
    await writeGGUF(out, { metadata, tensors });
  } finally {
    file.close();
  }
  return out;
}

/** A FIFO at `path`, or false where `mkfifo` is missing. */
async function makeFifo(path: string): Promise<boolean> {
  const made = await new Deno.Command("mkfifo", { args: [path] }).output().catch(() => undefined);
  return made?.success === true;
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "wgkv_bad_input_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const run = (model: string, ...more: string[]) => [
  "run",
  "-m",
  model,
  "-p",
  "Once",
  "-n",
  "1",
  "--backend",
  "cpu",
  ...more,
];

fixtureTest("bad input: truncated and corrupt GGUF files", [MODEL], async () => {
  await withTempDir(async (dir) => {
    const bytes = await Deno.readFile(fixture(MODEL));
    const file = await openGGUF(fixture(MODEL));
    const dataOffset = file.dataOffset;
    const first = file.tensors[0];
    file.close();
    // The first tensor info starts with its name's length (u64), then the name.
    const name = new TextEncoder().encode(first.name);
    let info = 24;
    while (!name.every((b, j) => bytes[info + 8 + j] === b)) info++;
    const typeAt = info + 8 + name.length + 4 + 8 * first.shape.length;
    const write = async (label: string, data: Uint8Array) => {
      await Deno.writeFile(`${dir}/${label}.gguf`, data);
      return `${dir}/${label}.gguf`;
    };
    const patched = (at: number, value: number) => {
      const copy = bytes.slice();
      new DataView(copy.buffer).setUint32(at, value, true);
      return copy;
    };
    const cases: BadCase[] = [];
    const bad = async (label: string, data: Uint8Array, error: RegExp) => {
      const path = await write(label, data);
      const named = new RegExp(`${lit(path).source}: .*${error.source}`);
      cases.push({ args: ["info", path], code: 1, error: named });
      cases.push({ args: run(path), code: 1, error: named });
    };
    await bad("header", bytes.subarray(0, 10), /not a GGUF file \(only 10 bytes\)/);
    await bad("metadata", bytes.subarray(0, 100), /more than a 100-byte file holds/);
    await bad("tensor-infos", bytes.subarray(0, info + 20), /truncated: header and tensor infos need/);
    await bad("data", bytes.subarray(0, dataOffset + 1000), /runs past the end of the/);
    await bad("last-byte", bytes.subarray(0, bytes.length - 1), /runs past the end of the/);
    await bad("magic", patched(0, 0x4c4d4747), /not a GGUF file \(bad magic\)/);
    await bad("version", patched(4, 99), /GGUF version 99 is not supported/);
    await bad(
      "type99",
      patched(typeAt, 99),
      /tensor token_embd\.weight: type 99 \(unknown\) is not supported/,
    );
    await bad("type-iq2", patched(typeAt, 16), /type IQ2_XXS \(16\) is not supported/);
    await expectErrors(cases);
  });
});

fixtureTest("bad input: GGUF files that are not a usable Llama", [MODEL, VOCAB_ONLY], async () => {
  await withTempDir(async (dir) => {
    const src = fixture(MODEL);
    const made = (label: string, change: Parameters<typeof rewrite>[2]) =>
      rewrite(src, `${dir}/${label}.gguf`, change);
    const cases: [string, RegExp][] = [
      [
        await made("gpt2", { meta: { "general.architecture": str("gpt2") } }),
        /architecture "gpt2" is not supported/,
      ],
      [
        await made("noarch", { meta: { "general.architecture": undefined } }),
        /general\.architecture is missing/,
      ],
      [await made("missing", { drop: ["blk.1.ffn_up.weight"] }), /tensor blk\.1\.ffn_up\.weight is missing/],
      [
        await made("shape", { reshape: { "blk.0.attn_q.weight": [64, 32] } }),
        /tensor blk\.0\.attn_q\.weight has shape \[64, 32\], expected \[64, 64\]/,
      ],
      [
        await made("embd0", { meta: { "llama.embedding_length": u32(0) } }),
        /embedding_length = 0 is not a positive/,
      ],
      [
        await made("embd2p40", { meta: { "llama.embedding_length": u64(2n ** 40n) } }),
        /embedding_length = 1099511627776 is not a positive integer/,
      ],
      // An absurd block count fails on its first missing block, without listing a billion of them.
      [
        await made("blocks", { meta: { "llama.block_count": u32(2 ** 30) } }),
        /tensor blk\.5\.attn_norm\.weight is missing/,
      ],
      [
        await made("heads", { meta: { "llama.attention.head_count_kv": u32(3) } }),
        /not a multiple of head_count_kv 3/,
      ],
      [
        await made("no-tokens", { meta: { "tokenizer.ggml.tokens": undefined } }),
        /no tokenizer\.ggml\.tokens array/,
      ],
      [
        await made("bos", { meta: { "tokenizer.ggml.bos_token_id": u32(99999) } }),
        /bos_token_id: token id 99999 is outside the vocabulary/,
      ],
      [
        await made("tokmodel", { meta: { "tokenizer.ggml.model": str("t5") } }),
        /tokenizer\.ggml\.model = "t5"/,
      ],
      [fixture(VOCAB_ONLY), /tensor token_embd\.weight is missing/],
    ];
    await expectErrors(
      cases.map(([path, error]) => ({
        args: run(path),
        code: 1,
        error: new RegExp(`${lit(path).source}: .*${error.source}`),
      })),
    );
    // tokenize reads only the vocabulary, but names the file when it is broken.
    const noTokens = `${dir}/no-tokens.gguf`;
    await expectErrors([{
      args: ["tokenize", "-m", noTokens, "hi"],
      code: 1,
      error: lit(`${noTokens}: metadata`),
    }]);
  });
});

fixtureTest("bad input: paths that are not GGUF files", [MODEL], async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(`${dir}/text.gguf`, "hello, not a model\n".repeat(4));
    await Deno.writeFile(`${dir}/empty.gguf`, new Uint8Array());
    await Deno.mkdir(`${dir}/folder.gguf`);
    const paths: [string, RegExp][] = [
      [`${dir}/missing.gguf`, /cannot open: No such file/],
      [`${dir}/folder.gguf`, /not a regular file \(a directory\)/],
      [`${dir}/text.gguf`, /not a GGUF file \(bad magic\)/],
      [`${dir}/empty.gguf`, /not a GGUF file \(only 0 bytes\)/],
      [`${dir}/text.gguf/inner.gguf`, /cannot open: Not a directory/],
      ["/dev/null", /not a regular file/],
    ];
    // A FIFO would block the open until a writer came.
    if (await makeFifo(`${dir}/fifo.gguf`)) paths.push([`${dir}/fifo.gguf`, /not a regular file/]);
    const cases: BadCase[] = [];
    for (const [path, error] of paths) {
      const named = new RegExp(`${lit(path).source}: .*${error.source}`);
      cases.push({ args: ["info", path], code: 1, error: named });
      cases.push({ args: run(path), code: 1, error: named });
      cases.push({ args: ["tokenize", "-m", path, "hi"], code: 1, error: named });
    }
    cases.push({ args: run(""), code: 2, error: /--model: the value is empty/ });
    cases.push({ args: ["info", ""], code: 1, error: /no GGUF file named/ });
    await expectErrors(cases);
  });
});

fixtureTest("bad input: flag values out of range, malformed, conflicting or unknown", [MODEL], async () => {
  const m = fixture(MODEL);
  const flag = (more: string[], error: RegExp): BadCase => ({ args: run(m, ...more), code: 2, error });
  await expectErrors([
    flag(["-n", "abc"], /--n-predict: "abc" is not an integer/),
    flag(["-n", "-5"], /--n-predict: -5 is not valid/),
    flag(["--temp", "-1"], /--temp: -1 is below 0/),
    flag(["--temp", "1e400"], /--temp: "1e400" is not a number/),
    flag(["--top-p", "2"], /--top-p: 2 is not valid/),
    flag(["--top-k", "1.5"], /--top-k: "1\.5" is not an integer/),
    flag(["--seed", "-1"], /--seed: -1 is below 0/),
    flag(["--seed", "4294967296"], /--seed: 4294967296 is above 4294967295/),
    flag(["--stop", ""], /--stop: the text to stop before is empty/),
    flag(["-c", "0"], /--ctx: 0 is below 1/),
    flag(["-c", "abc"], /--ctx: "abc" is not an integer/),
    flag(["-b", "0"], /--batch: 0 is below 1/),
    flag(["--backend", "metal"], /--backend: "metal" is not one of auto, cpu, webgpu/),
    flag(["--kv", "lru"], /--kv: "lru" is not one of/),
    flag(["--kv", "wgkv"], /--kv wgkv needs --gate FILE/),
    flag(["--gate", "g.gguf"], /--gate is only used with --kv wgkv/),
    flag(["--window", "8"], /--window needs --kv wgkv, window, sink or random/),
    flag(["--sinks", "4"], /--sinks is only used with --kv sink/),
    flag(["--kv", "window", "--admit", "0.5"], /--admit is only used with --kv random/),
    flag(["--kv", "sink", "--threshold", "0.5"], /--threshold is only used with --kv wgkv/),
    flag(["--kv-global", "0.5"], /--kv-global needs --kv wgkv, window, sink or random/),
    flag(["--profile"], /--profile needs the WebGPU backend, not --backend cpu/),
    flag(["--coop-prefill"], /--coop-prefill needs the WebGPU backend/),
    flag(["--kv", "window"], /--kv window needs the WebGPU backend/),
    flag(["-f", "/etc/hostname"], /give either -p\/--prompt or -f\/--file, not both/),
    flag(["--foo"], /run: unknown flag --foo/),
    flag(["-x"], /run: unknown flag -x/),
    flag(["extra"], /run: unexpected argument "extra"/),
    flag(["--json=yes"], /--json' does not take an argument/),
    // Flag mistakes are found before the model file is read.
    { args: run("/nonexistent.gguf", "--sinks", "2"), code: 2, error: /--sinks is only used with --kv sink/ },
    { args: ["run", "-p", "hi"], code: 2, error: /--model is required/ },
    { args: ["info", m, "--ctx", "-3"], code: 2, error: /--ctx: -3 is below 1/ },
    { args: ["info", m, m], code: 2, error: /give exactly one MODEL file/ },
    { args: ["tokenize", "-m", m], code: 2, error: /give the TEXT as one argument/ },
    { args: ["synth", "--type", "q9", "-o", "x.gguf"], code: 2, error: /--type: "q9" is not one of/ },
    {
      args: ["chat", "-m", m, "-n", "x"],
      code: 2,
      error: /--n-predict: "x" is not an integer/,
      stdin: "hi\n",
    },
    { args: ["gate", "frob"], code: 2, error: /gate: unknown subcommand "frob"/ },
  ]);
});

fixtureTest("bad input: contexts that cannot hold the prompt", [MODEL], async () => {
  await withTempDir(async (dir) => {
    const m = fixture(MODEL);
    const short = await rewrite(m, `${dir}/ctx8.gguf`, { meta: { "llama.context_length": u32(8) } });
    const long = "Once upon a time there was a little girl named Lily who loved to play outside";
    await Deno.writeTextFile(`${dir}/long.txt`, `${long}. `.repeat(200));
    await expectErrors([
      {
        args: run(m, "-c", "99999"),
        code: 2,
        error: /--ctx 99999 exceeds the model's trained context of 2048/,
      },
      { args: run(short, "-c", "64"), code: 2, error: /--ctx 64 exceeds the model's trained context of 8/ },
      {
        args: ["info", m, "--ctx", "4096"],
        code: 2,
        error: /--ctx 4096 exceeds the model's trained context/,
      },
      {
        args: ["run", "-m", m, "-p", long, "-c", "8", "--backend", "cpu"],
        code: 1,
        error: /context overflow: the prompt's \d+ tokens exceed --ctx 8/,
      },
      {
        args: ["run", "-m", short, "-p", long, "--backend", "cpu"],
        code: 1,
        error: /context overflow: the prompt's \d+ tokens exceed the model's trained context of 8/,
      },
      {
        args: ["run", "-m", m, "-f", `${dir}/long.txt`, "--backend", "cpu"],
        code: 1,
        error: /context overflow: the prompt's \d+ tokens exceed the model's trained context of 2048/,
      },
    ]);
  });
});

fixtureTest("bad input: gate checkpoints and gate files", [MODEL, CHECKPOINT, OTHER_MODEL], async () => {
  await withTempDir(async (dir) => {
    const m = fixture(MODEL);
    const pt = fixture(CHECKPOINT);
    const bytes = await Deno.readFile(pt);
    await Deno.writeFile(`${dir}/half.pt`, bytes.subarray(0, bytes.length >> 1));
    await Deno.writeFile(`${dir}/head.pt`, bytes.subarray(0, 10));
    await Deno.writeTextFile(`${dir}/text.pt`, "not a checkpoint\n");
    // Corrupt one stored byte of a storage: the CRC-32 check finds it.
    const flipped = bytes.slice();
    const entry = new TextDecoder("latin1").decode(bytes).indexOf("data/1");
    ok(entry > 0);
    flipped[entry + 200] ^= 0xff;
    await Deno.writeFile(`${dir}/flipped.pt`, flipped);
    const other = `${dir}/other-gate.gguf`;
    const init = await runCli(["gate", "init", "-m", fixture(OTHER_MODEL), "-o", other]);
    equal(init.code, 0, init.stderr);
    const imp = (checkpoint: string, ...more: string[]) => [
      "gate",
      "import",
      checkpoint,
      "-m",
      m,
      "-o",
      `${dir}/g.gguf`,
      ...more,
    ];
    await expectErrors([
      { args: imp(`${dir}/half.pt`), code: 1, error: lit(`${dir}/half.pt: not a readable zip archive`) },
      {
        args: imp(`${dir}/head.pt`),
        code: 1,
        error: lit(`${dir}/head.pt: not a readable zip archive (only 10`),
      },
      { args: imp(`${dir}/text.pt`), code: 1, error: lit(`${dir}/text.pt: not a readable zip archive`) },
      { args: imp(`${dir}/flipped.pt`), code: 1, error: /flipped\.pt: zip entry .*: CRC-32 mismatch/ },
      { args: imp(`${dir}/missing.pt`), code: 1, error: /missing\.pt: cannot read/ },
      { args: imp(m), code: 1, error: /stories260K\.gguf: not a readable zip archive/ },
      {
        args: ["gate", "import", pt, "-m", fixture(OTHER_MODEL), "-o", `${dir}/g.gguf`],
        code: 1,
        error: /unexpected key model\.layers\.1\..*: layer 1 does not exist in model .*llama-2-tiny-random/,
      },
      { args: imp(pt, "--expand", "3"), code: 1, error: /set the expand option to 4/ },
      { args: imp(pt, "--key-order", "abc"), code: 2, error: /--key-order: "abc" is not one of gguf, hf/ },
      { args: imp(pt, "--threshold", "1.5"), code: 2, error: /--threshold: 1\.5 is above 1/ },
      { args: ["gate", "info", m], code: 1, error: /general\.architecture is "llama", expected "wgkv-gate"/ },
      {
        args: ["gate", "info", other, "-m", m],
        code: 1,
        error: /does not fit model .*stories260K\.gguf: layer count/,
      },
      {
        args: ["run", "-m", m, "-p", "hi", "--kv", "wgkv", "--gate", other],
        code: 1,
        error: /gate .*other-gate\.gguf does not fit model/,
      },
      {
        args: ["run", "-m", m, "-p", "hi", "--kv", "wgkv", "--gate", `${dir}/half.pt`],
        code: 1,
        error: /half\.pt: not a GGUF file \(bad magic\)/,
      },
    ]);
  });
});

fixtureTest("bad input: GGUF outputs that cannot be written", [MODEL, CHECKPOINT], async () => {
  await withTempDir(async (dir) => {
    const m = fixture(MODEL);
    await Deno.mkdir(`${dir}/folder`);
    await expectErrors([
      {
        args: ["synth", "-o", `${dir}/folder`],
        code: 1,
        error: /folder: cannot write a GGUF file there \(a directory\)/,
      },
      {
        args: ["synth", "-o", `${dir}/no/such/x.gguf`],
        code: 1,
        error: /x\.gguf: cannot write \(No such file/,
      },
      {
        args: ["gate", "init", "-m", m, "-o", `${dir}/folder`],
        code: 1,
        error: /cannot write a GGUF file there/,
      },
      {
        args: ["gate", "import", fixture(CHECKPOINT), "-m", m, "-o", `${dir}/no/g.gguf`],
        code: 1,
        error: /g\.gguf: cannot write/,
      },
      { args: ["synth", "-o", ""], code: 2, error: /--out: the value is empty/ },
    ]);
    // A FIFO (a device such as /dev/null alike) is not replaced by the finished file.
    if (await makeFifo(`${dir}/fifo.gguf`)) {
      await expectErrors([{
        args: ["synth", "-o", `${dir}/fifo.gguf`],
        code: 1,
        error: /fifo\.gguf: cannot write a GGUF file there \(not a regular file\)/,
      }]);
      ok(Deno.statSync(`${dir}/fifo.gguf`).isFifo);
      await Deno.remove(`${dir}/fifo.gguf`);
    }
    // Nothing was left behind.
    equal([...Deno.readDirSync(dir)].map((e) => e.name).join(), "folder");
  });
});

fixtureTest("bad input: batch documents and results files", [MODEL], async () => {
  await withTempDir(async (dir) => {
    const m = fixture(MODEL);
    const files: Record<string, string> = {
      "notjson.jsonl": '{"id": "a", "text": "x"}\nnot json\n',
      "array.jsonl": "[1, 2]\n",
      "null.jsonl": "null\n",
      "notext.jsonl": '{"id": "a"}\n',
      "idnum.jsonl": '{"id": 5, "text": "x"}\n',
      "cut.jsonl": '{"id": "a", "text": "x"',
      "dup.jsonl": '{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n',
      "empty.jsonl": "",
      "blank.jsonl": "\n  \n",
      "empty.txt": "",
      "good.jsonl": '{"id": "a", "text": "Lily went to the park."}\n',
      "results.jsonl": "a line that is no result\n",
    };
    for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(`${dir}/${name}`, text);
    const batch = (...more: string[]) => ["batch", "-m", m, "--backend", "cpu", "-n", "2", ...more];
    const bad = (name: string, error: RegExp): BadCase => ({
      args: batch(`${dir}/${name}`),
      code: 1,
      error: new RegExp(`${lit(`${dir}/${name}`).source}${error.source}`),
    });
    const good = `${dir}/good.jsonl`;
    await expectErrors([
      bad("notjson.jsonl", /:2: not valid JSON/),
      bad("array.jsonl", /:1: expected an object/),
      bad("null.jsonl", /:1: expected an object/),
      bad("notext.jsonl", /:1: "text" must be a string/),
      bad("idnum.jsonl", /:1: "id" must be a non-empty string/),
      bad("cut.jsonl", /:1: not valid JSON/),
      bad("dup.jsonl", /:2: duplicate id "a"/),
      bad("empty.jsonl", /: the input file is empty/),
      bad("blank.jsonl", /: the input file is empty/),
      bad("empty.txt", /: the input file is empty/),
      bad("missing.jsonl", /: cannot read the input file/),
      { args: batch(dir), code: 1, error: /cannot read the input file \(Is a directory/ },
      {
        args: batch("-o", `${dir}/results.jsonl`, good),
        code: 1,
        error: /results\.jsonl:1: not a result line/,
      },
      {
        args: batch("-o", dir, good),
        code: 1,
        error: /: not a regular file \(the results file is read back/,
      },
      {
        args: batch("-o", `${dir}/no/out.jsonl`, good),
        code: 1,
        error: /out\.jsonl: cannot open for appending/,
      },
      { args: batch(), code: 2, error: /batch: give at least one input file/ },
      { args: batch("-n", "-1", good), code: 2, error: /--n-predict: batch needs a limit per summary/ },
      { args: batch("--sinks", "3", "-o", `${dir}/new.jsonl`, good), code: 2, error: /--sinks is only used/ },
    ]);
    // A FIFO would block the resume's read (a device such as /dev/zero would never end it).
    if (await makeFifo(`${dir}/results.fifo`)) {
      await expectErrors([{
        args: batch("-o", `${dir}/results.fifo`, good),
        code: 1,
        error: /results\.fifo: not a regular file/,
      }]);
    }
    // A flag mistake creates no results file.
    ok(!(await Deno.stat(`${dir}/new.jsonl`).then(() => true, () => false)));
  });
});

fixtureTest("bad input: chat templates that fail to render", [MODEL], async () => {
  await withTempDir(async (dir) => {
    const m = fixture(MODEL);
    const template = (label: string, entry: MetadataEntry) =>
      rewrite(m, `${dir}/${label}.gguf`, { meta: { "tokenizer.chat_template": entry } });
    const cases: [string, RegExp][] = [
      [await template("syntax", str("{% for m in messages %}{{ m.content }")), /Parser Error/],
      [await template("raise", str("{{ raise_exception('no system role') }}")), /no system role/],
      [await template("call", str("{{ undefined_function(messages) }}")), /not a function/],
    ];
    const number = await template("number", u32(7));
    const chat = (model: string) => ["chat", "-m", model, "--backend", "cpu", "-n", "2", "--temp", "0"];
    await expectErrors([
      ...cases.map(([model, error]): BadCase => ({
        args: chat(model),
        code: 1,
        stdin: "hello\n",
        error: new RegExp(`${lit(model).source}: tokenizer\\.chat_template: .*${error.source}`),
      })),
      {
        args: chat(number),
        code: 1,
        stdin: "hello\n",
        error: lit(`${number}: metadata tokenizer.chat_template: expected a string, got number`),
      },
    ]);
    // batch renders each document with the template too.
    const docs = `${dir}/docs.jsonl`;
    await Deno.writeTextFile(docs, '{"id": "a", "text": "Lily went to the park."}\n');
    const raise = cases[1][0];
    await expectErrors([{
      args: ["batch", "-m", raise, "--backend", "cpu", "-n", "2", docs],
      code: 1,
      error: lit(`${raise}: tokenizer.chat_template: no system role`),
    }]);
  });
});

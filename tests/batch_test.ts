import { deepEqual, equal, match, ok, rejects } from "node:assert/strict";
import { fixture, fixtureTest } from "./fixtures.ts";
import { runCli } from "./cli_process.ts";
import { readBatchDocuments, resumeResults, summarizeDocuments } from "../src/engine/batch.ts";
import { loadModel } from "../src/engine/load.ts";
import { BadFileError } from "../src/errors.ts";

const MODEL = "stories260K.gguf";

/** Parses JSON lines, checking each is one complete object. */
function records(text: string): Record<string, unknown>[] {
  ok(text === "" || text.endsWith("\n"), "ends with a newline");
  return text.split("\n").filter((l) => l !== "").map((l) => {
    const r = JSON.parse(l);
    ok(r !== null && typeof r === "object" && typeof r.id === "string", l);
    return r;
  });
}

function checkSummary(r: Record<string, unknown>, maxTokens: number): void {
  equal(typeof r.summary, "string");
  ok((r.prompt_tokens as number) > 0);
  ok((r.generated_tokens as number) >= 1 && (r.generated_tokens as number) <= maxTokens);
  ok((r.prefill_ms as number) >= 0 && (r.decode_ms as number) >= 0);
  ok(["length", "eos", "stop"].includes(r.stop_reason as string), String(r.stop_reason));
}

/** A record without its timings (which differ between runs). */
function withoutTimes(r: Record<string, unknown>): Record<string, unknown> {
  const { prefill_ms: _p, decode_ms: _d, ...rest } = r;
  return rest;
}

/** A temporary folder with two text documents and a JSONL of two. */
async function inputs(): Promise<{ dir: string; files: string[] }> {
  const dir = await Deno.makeTempDir({ prefix: "wgkv_batch_" });
  await Deno.writeTextFile(`${dir}/a.txt`, "Once upon a time there was a cat named Tom. Tom liked to play.");
  await Deno.writeTextFile(`${dir}/b.txt`, "Lily went to the park with her mom. They saw a big dog.");
  await Deno.writeTextFile(
    `${dir}/docs.jsonl`,
    '{"id": "j1", "text": "The dog ran fast."}\n\n{"id": "j2", "text": "A big red ball fell."}\n',
  );
  return { dir, files: [`${dir}/a.txt`, `${dir}/b.txt`, `${dir}/docs.jsonl`] };
}

fixtureTest("batch: four documents to stdout, then --out written once and resumed", [MODEL], async () => {
  const { dir, files } = await inputs();
  const base = ["batch", "-m", fixture(MODEL), "--backend", "cpu", "-n", "8"];
  const ids = [files[0], files[1], "j1", "j2"];

  const direct = await runCli([...base, ...files]);
  equal(direct.code, 0, direct.stderr);
  const printed = records(direct.stdout);
  deepEqual(printed.map((r) => r.id), ids);
  for (const r of printed) checkSummary(r, 8);
  match(direct.stderr, /\[4\/4\] j2: \d+ → \d+ tokens, [\d.]+ tok\/s/);

  const out = `${dir}/results.jsonl`;
  const first = await runCli([...base, "--out", out, ...files]);
  equal(first.code, 0, first.stderr);
  equal(first.stdout, "", "stdout stays clean with --out");
  const written = await Deno.readTextFile(out);
  deepEqual(records(written).map((r) => r.id), ids);
  // Greedy by default: the same summaries as the run to stdout.
  deepEqual(records(written).map((r) => r.summary), printed.map((r) => r.summary));

  const again = await runCli([...base, "--out", out, ...files]);
  equal(again.code, 0, again.stderr);
  equal(await Deno.readTextFile(out), written, "a second run adds nothing");
  match(again.stderr, /4 of 4 documents already/);

  // An interrupted run: the last line was cut in the middle.
  const lines = written.split("\n");
  const cut = lines.slice(0, 3).join("\n") + "\n" + lines[3].slice(0, 20);
  await Deno.writeTextFile(out, cut);
  const resumed = await runCli([...base, "--out", out, ...files]);
  equal(resumed.code, 0, resumed.stderr);
  match(resumed.stderr, /\[1\/1\] j2:/);
  const completed = records(await Deno.readTextFile(out));
  deepEqual(completed.slice(0, 3), records(written).slice(0, 3), "complete lines are kept");
  deepEqual(completed.map(withoutTimes), records(written).map(withoutTimes), "the partial line is redone");
  await Deno.remove(dir, { recursive: true });
});

fixtureTest("batch: a document longer than the context is cut in the middle (GPU)", [MODEL], async () => {
  const dir = await Deno.makeTempDir({ prefix: "wgkv_batch_" });
  const words = Array.from({ length: 300 }, (_, i) => `word${i}`).join(" ");
  const docs = [
    { id: "long", text: `The beginning of the story. ${words} The very end.` },
    { id: "short", text: "Tom had a ball." },
  ];
  await Deno.writeTextFile(`${dir}/in.jsonl`, docs.map((d) => JSON.stringify(d)).join("\n"));
  const r = await runCli(["batch", "-m", fixture(MODEL), "-c", "128", "-n", "8", `${dir}/in.jsonl`]);
  equal(r.code, 0, r.stderr);
  match(r.stderr, /long: too long for the context of 128 with -n 8; kept \d+ of \d+ document tokens/);
  const got = records(r.stdout);
  deepEqual(got.map((x) => x.id), ["long", "short"]);
  for (const x of got) checkSummary(x, 8);
  ok((got[0].prompt_tokens as number) + 8 <= 128, String(got[0].prompt_tokens));
  ok((got[0].prompt_tokens as number) > 100, "most of the context is used");
  await Deno.remove(dir, { recursive: true });
});

fixtureTest("batch: an instruction too long for any document gives an error record", [MODEL], async () => {
  const dir = await Deno.makeTempDir({ prefix: "wgkv_batch_" });
  await Deno.writeTextFile(`${dir}/a.txt`, "Tom had a ball.");
  const r = await runCli([
    "batch",
    "-m",
    fixture(MODEL),
    "--backend",
    "cpu",
    "-c",
    "64",
    "-n",
    "8",
    "--instruction",
    "Summarize. ".repeat(40),
    `${dir}/a.txt`,
  ]);
  equal(r.code, 0, r.stderr);
  const got = records(r.stdout);
  equal(got.length, 1);
  equal(got[0].id, `${dir}/a.txt`);
  match(got[0].error as string, /cannot fit/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("batch: bad inputs and flags are one-line errors", async () => {
  const dir = await Deno.makeTempDir({ prefix: "wgkv_batch_" });
  await Deno.writeTextFile(`${dir}/bad.jsonl`, '{"id": "x", "text": "ok"}\n{"id": "y", "text": \n');
  await Deno.writeTextFile(`${dir}/noid.jsonl`, '{"text": "ok"}\n');
  await Deno.writeTextFile(`${dir}/dup.jsonl`, '{"id": "x", "text": "a"}\n{"id": "x", "text": "b"}\n');
  const oneLine = (r: { code: number; stderr: string }, code: number, pattern: RegExp) => {
    equal(r.code, code, r.stderr);
    const lines = r.stderr.trim().split("\n");
    equal(lines.length, 1, r.stderr);
    match(lines[0], pattern);
  };
  const m = ["batch", "-m", "/nonexistent/m.gguf"];
  oneLine(await runCli([...m, `${dir}/bad.jsonl`]), 1, /bad\.jsonl:2: not valid JSON/);
  oneLine(await runCli([...m, `${dir}/noid.jsonl`]), 1, /noid\.jsonl:1: "id" must be a non-empty string/);
  oneLine(await runCli([...m, `${dir}/dup.jsonl`]), 1, /dup\.jsonl:2: duplicate id "x"/);
  oneLine(await runCli([...m, `${dir}/missing.txt`]), 1, /missing\.txt: cannot read the input file/);
  oneLine(await runCli([...m, "--bogus", `${dir}/bad.jsonl`]), 2, /unknown flag --bogus/);
  oneLine(await runCli(m), 2, /at least one input/);
  await Deno.writeTextFile(`${dir}/results.jsonl`, "not json\n");
  await Deno.writeTextFile(`${dir}/a.txt`, "x");
  oneLine(
    await runCli([...m, "--out", `${dir}/results.jsonl`, `${dir}/a.txt`]),
    1,
    /results\.jsonl:1: not a result line/,
  );
  // A results file that cannot be written is named before any model is opened (this one does not exist).
  oneLine(
    await runCli([...m, "--out", `${dir}/no/such/folder/r.jsonl`, `${dir}/a.txt`]),
    1,
    /r\.jsonl: cannot open for appending/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("batch: readBatchDocuments and resumeResults", async () => {
  const dir = await Deno.makeTempDir({ prefix: "wgkv_batch_" });
  await Deno.writeTextFile(`${dir}/d.jsonl`, '{"id": "a", "text": "1"}\r\n{"id": "b", "text": ""}');
  deepEqual(await readBatchDocuments([`${dir}/d.jsonl`]), [{ id: "a", text: "1" }, { id: "b", text: "" }]);
  await Deno.writeTextFile(`${dir}/arr.jsonl`, "[1, 2]\n");
  await rejects(readBatchDocuments([`${dir}/arr.jsonl`]), BadFileError);

  deepEqual(await resumeResults(`${dir}/none.jsonl`), new Set());
  const out = `${dir}/r.jsonl`;
  await Deno.writeTextFile(out, '{"id":"a","summary":"s"}\n{"id":"b","error":"e"}\n{"id":"c","summ');
  deepEqual(await resumeResults(out), new Set(["a", "b"]));
  equal(await Deno.readTextFile(out), '{"id":"a","summary":"s"}\n{"id":"b","error":"e"}\n');
  await Deno.remove(dir, { recursive: true });
});

fixtureTest("batch: each document's prefill reports its own progress", [MODEL], async () => {
  const model = await loadModel(fixture(MODEL), { backend: "cpu" });
  try {
    const long = "Once upon a time there was a little girl named Lily. She liked to play in the park. "
      .repeat(6);
    const docs = [{ id: "long", text: long }, { id: "short", text: "The dog ran fast." }];
    const seen: [string, number, number][] = [];
    const records = summarizeDocuments(model, docs, {
      generation: { maxTokens: 2, temperature: 0 },
      onPrefill: (doc) => (done, total) => seen.push([doc.id, done, total]),
    });
    const ids: string[] = [];
    for await (const r of records) ids.push(r.id);
    deepEqual(ids, ["long", "short"]);
    // The CPU backend reports every 64 tokens: the long prompt runs past 64, the short one does not.
    ok(
      seen.length > 0 && seen.every(([id, done, total]) => id === "long" && done % 64 === 0 && done < total),
      JSON.stringify(seen),
    );
  } finally {
    model.close();
  }
});

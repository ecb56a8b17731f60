import { equal, match } from "node:assert/strict";

// `deno task compile` needs a runtime image from Deno's download server, which may be unreachable.
// DENORT_BIN lets `deno compile` use a local binary instead: the result is not runnable, but the build
// itself, the module graph and the embedded files are exactly those of the real task.
Deno.test("compile: the compile task builds cli.ts with every WGSL shader embedded", async () => {
  const config = JSON.parse(await Deno.readTextFile(new URL("../deno.json", import.meta.url)));
  const task: string = config.tasks.compile;
  match(task, /--include wgsl/);
  const dir = await Deno.makeTempDir();
  try {
    const args = task.replace(/^deno /, "").replace(/--output \S+/, `--output ${dir}/wgkv`).split(/\s+/);
    const out = await new Deno.Command(Deno.execPath(), {
      args,
      cwd: new URL("..", import.meta.url).pathname,
      env: { DENORT_BIN: Deno.execPath(), NO_COLOR: "1" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const log = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    equal(out.code, 0, log);
    match(log, /wgsl/);
    equal((await Deno.stat(`${dir}/wgkv`)).isFile, true);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

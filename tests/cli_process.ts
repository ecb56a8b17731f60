/**
 * Runs `cli.ts` in a subprocess for the CLI tests: exit code, stdout and stderr, colours off.
 *
 * @module
 */

const CLI = new URL("../cli.ts", import.meta.url).pathname;

/** Runs the CLI with `args` (and `env` added to a plain environment) and returns what it did. */
export async function runCli(
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp", ...env },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

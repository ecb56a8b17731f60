/**
 * `wgkv chat`: an interactive conversation using the model's chat template. The KV cache is kept across
 * turns: each turn's prompt is the session's transcript (the replies as generated) followed by the tokens of
 * the rendered text after it, so only the new message and the template's glue are prefilled.
 *
 * @module
 */

import { BadFlagError } from "../errors.ts";
import { chatDateString, type ChatMessage, renderChat } from "../chat/template.ts";
import { type ChatPrompt, ChatPrompter } from "../chat/prompter.ts";
import type { Model } from "../engine/load.ts";
import type { Command } from "./main.ts";
import { type FlagSpec, helpText, parseFlags, stringFlag } from "./flags.ts";
import { generationOptions, loadFromFlags, MODEL_FLAGS, SAMPLING_FLAGS, statsLine, writeOut } from "./run.ts";
import { prefillReporter } from "./progress.ts";
import { Interrupt } from "./interrupt.ts";

const FLAGS: Record<string, FlagSpec> = {
  ...MODEL_FLAGS,
  system: { type: "string", help: "TEXT  system message" },
  ...SAMPLING_FLAGS,
  "n-predict": {
    type: "string",
    short: "n",
    help: "N  most tokens per reply (default 512; -1: until the end of the reply or a full context)",
  },
  help: { type: "boolean", short: "h", help: "show this help" },
};

/** Reads stdin line by line (an async iterator that ends at end of input). */
async function* lines(): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffered = "";
  for await (const chunk of Deno.stdin.readable) {
    buffered += decoder.decode(chunk, { stream: true });
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      yield buffered.slice(0, nl).replace(/\r$/, "");
      buffered = buffered.slice(nl + 1);
    }
  }
  if (buffered.length > 0) yield buffered;
}

/** The `chat` subcommand. */
export const chatCommand: Command = {
  summary: "talk with a model in the terminal (chat template, KV cache kept across turns)",
  async main(args) {
    const { values, positionals } = parseFlags("chat", args, FLAGS);
    if (values.help) {
      console.log(helpText("wgkv chat -m MODEL [--system TEXT] [flags]", chatCommand.summary, FLAGS));
      console.log("\nin the chat: /reset starts over, /exit (or end of input) quits");
      return 0;
    }
    if (positionals.length > 0) throw new BadFlagError(`chat: unexpected argument "${positionals[0]}"`);
    if (values["n-predict"] === undefined) values["n-predict"] = "512";
    const options = generationOptions(values);
    const model = await loadFromFlags(values);
    const system = stringFlag(values, "system");
    const messages: ChatMessage[] = system ? [{ role: "system", content: system }] : [];
    const session = model.session();
    // The date stays that of the chat's start, so a chat that goes on past midnight keeps its cache.
    const prompter = new ChatPrompter(model.file.metadata, model.tokenizer, {
      dateString: chatDateString(),
      source: model.file.path,
    });
    const interactive = Deno.stdin.isTerminal();
    const interrupt = new Interrupt();
    try {
      const first = renderChat(model.file.metadata, [{ role: "user", content: "" }], prompter.options);
      if (first.template === "fallback") {
        console.error(`chat: the model has no chat template; using the ${first.layout} layout`);
      }
      if (interactive) console.error("type a message; /reset starts over, /exit quits");
      if (interactive) await Deno.stderr.write(new TextEncoder().encode("> "));
      for await (const line of lines()) {
        const text = line.trim();
        if (text === "/exit" || text === "/quit") break;
        if (text === "/reset") {
          messages.length = system ? 1 : 0;
          session.reset();
          prompter.forget();
          console.error("(conversation reset)");
        } else if (text !== "") {
          messages.push({ role: "user", content: text });
          const fitted = fitPrompt(
            model,
            messages,
            options.maxTokens,
            () => prompter.prompt(messages, session.transcript),
          );
          if (fitted.dropped > 0) {
            console.error(
              `(the conversation outgrew the context of ${model.backend.contextLength} tokens: ` +
                `its ${fitted.dropped} oldest message(s) dropped; -c sets the context)`,
            );
          }
          const ids = fitted.prompt.ids;
          if (ids.length >= model.backend.contextLength) {
            messages.pop();
            console.error(
              `chat: this message takes ${ids.length} tokens with the chat layout, more than the context ` +
                `of ${model.backend.contextLength} can hold with a reply; shorten it or raise -c`,
            );
            if (interactive) await Deno.stderr.write(new TextEncoder().encode("> "));
            continue;
          }
          // Reuse the cached prefix the new prompt shares with the conversation so far (all of it when the
          // prompt goes on from the transcript).
          const have = session.transcript;
          let common = 0;
          while (common < have.length && common < ids.length - 1 && have[common] === ids[common]) common++;
          session.rewind(common);
          // A WG-KV cache goes back only a few tokens: further, it restarts from 0.
          common = session.tokens.length;
          if (common > 0) console.error(`(${common} tokens of the conversation reused from the KV cache)`);
          let reply = "";
          const gen = session.generate(ids.slice(common), {
            ...options,
            onPrefill: prefillReporter(),
            signal: interrupt.reply(),
          });
          let r = await gen.next();
          while (!r.done) {
            reply += r.value.text;
            await writeOut(r.value.text);
            r = await gen.next();
          }
          await writeOut("\n");
          console.error(statsLine(r.value));
          interrupt.idle();
          if (r.value.stopReason === "abort" && r.value.generatedTokens === 0) {
            // Stopped before the reply began (during a long prompt): the message is not part of the chat.
            messages.pop();
            console.error("(message withdrawn)");
          } else {
            prompter.replied(fitted.prompt, session.transcript, reply, r.value.stopReason);
            messages.push({ role: "assistant", content: reply.trim() });
          }
        }
        if (interactive) await Deno.stderr.write(new TextEncoder().encode("> "));
      }
      return 0;
    } finally {
      interrupt.close();
      model.close();
    }
  },
};

/**
 * The prompt `promptFor` makes of `messages`, after dropping the oldest messages (a system message stays)
 * while it leaves less room than a reply of `maxTokens` (at most half the context) needs. Drops from
 * `messages` in place.
 */
function fitPrompt(
  model: Model,
  messages: ChatMessage[],
  maxTokens: number,
  promptFor: () => ChatPrompt,
): { prompt: ChatPrompt; dropped: number } {
  const ctx = model.backend.contextLength;
  const room = Math.min(maxTokens, Math.floor(ctx / 2));
  let prompt = promptFor();
  let dropped = 0;
  const first = messages[0]?.role === "system" ? 1 : 0;
  // The newest message (the user's) always stays; the oldest of the others go first.
  while (prompt.ids.length + room > ctx && messages.length - first > 1) {
    messages.splice(first, 1);
    dropped++;
    prompt = promptFor();
  }
  return { prompt, dropped };
}

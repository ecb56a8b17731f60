/**
 * Chat prompts: renders a conversation with the model's Jinja chat template (`tokenizer.chat_template`,
 * run by `@huggingface/jinja`), or with a fallback layout when the model has none:
 *
 * - SentencePiece (`tokenizer.ggml.model = "llama"`) vocabularies get the Llama-2 chat form
 *   `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] {user} [/INST]`;
 * - every other vocabulary gets a plain layout: `System: …\n`, `User: …\n`, `Assistant: …\n` lines,
 *   ending with `Assistant:` when a generation prompt is asked for.
 *
 * The rendered text may begin with the BOS token's text (most templates write `{{ bos_token }}`); encode it
 * with `{ addBos: !startsWithBos, parseSpecial: true }` so the markers become single special tokens.
 * {@link renderContinuation} says what a conversation's rendering adds after an earlier prompt and its reply.
 *
 * @module
 */

import { Template } from "@huggingface/jinja";
import { BadFileError, BadFlagError, inFile } from "../errors.ts";

/** Who speaks a chat message. */
export type ChatRole = "system" | "user" | "assistant";

/** One message of a conversation. */
export interface ChatMessage {
  /** The speaker. */
  role: ChatRole;
  /** The message text. */
  content: string;
}

/** Options of {@link renderChat}. */
export interface ChatOptions {
  /** End with the header that starts the assistant's reply; default true. */
  addGenerationPrompt?: boolean;
  /** `date_string` given to the template (Llama 3.x prints it); default today as "23 Nov 2026". */
  dateString?: string;
  /** Where the metadata comes from (the model's path): starts the message of a template error. */
  source?: string;
}

/** The rendered prompt and how it was made. */
export interface RenderedChat {
  /** The prompt text, special markers included as text. */
  text: string;
  /** "model" when the model's own template was used, "fallback" otherwise. */
  template: "model" | "fallback";
  /** The layout: the model's template, the Llama-2 `[INST]` fallback or the plain fallback. */
  layout: "model" | "llama2" | "plain";
  /** Whether `text` starts with the BOS token's text (then do not add BOS again when encoding). */
  startsWithBos: boolean;
}

const ROLES = new Set<string>(["system", "user", "assistant"]);
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const parsedTemplates = new Map<string, Template>();

/** Text of the token whose id is stored under `key`, or "" when there is none. */
function tokenText(meta: Readonly<Record<string, unknown>>, key: string): string {
  const tokens = meta["tokenizer.ggml.tokens"];
  const raw = meta[key];
  const id = typeof raw === "bigint" ? Number(raw) : raw;
  if (
    !Array.isArray(tokens) || typeof id !== "number" || !Number.isInteger(id) || id < 0 || id >= tokens.length
  ) {
    return "";
  }
  const text = tokens[id];
  return typeof text === "string" ? text : "";
}

/** `date` as templates print it ("%d %b %Y", e.g. "23 Nov 2026"), the default `dateString`. */
export function chatDateString(date: Date = new Date()): string {
  return `${String(date.getDate()).padStart(2, "0")} ${MONTHS[date.getMonth()]} ${date.getFullYear()}`;
}

function oneLine(message: string): string {
  return message.replace(/\s*\n\s*/g, " ").trim();
}

function checkMessages(messages: readonly ChatMessage[]): void {
  messages.forEach((m, i) => {
    if (m === null || typeof m !== "object" || !ROLES.has(m.role) || typeof m.content !== "string") {
      throw new BadFlagError(
        `chat message ${i}: expected { role: "system" | "user" | "assistant", content: string }`,
      );
    }
  });
}

function renderLlama2(messages: readonly ChatMessage[], bos: string, eos: string): string {
  let system = "";
  let text = "";
  let open = false; // an [INST] block waits for its answer
  for (const m of messages) {
    if (m.role === "system") {
      system += (system ? "\n" : "") + m.content;
    } else if (m.role === "user") {
      if (open) text += " [/INST]";
      const body = system ? `<<SYS>>\n${system}\n<</SYS>>\n\n${m.content}` : m.content;
      system = "";
      text += `${bos}[INST] ${body}`;
      open = true;
    } else {
      text += `${open ? " [/INST]" : ""} ${m.content} ${eos}`;
      open = false;
    }
  }
  if (open) text += " [/INST]";
  return text;
}

function renderPlain(messages: readonly ChatMessage[], addGenerationPrompt: boolean): string {
  const label = { system: "System", user: "User", assistant: "Assistant" } as const;
  let text = messages.map((m) => `${label[m.role]}: ${m.content}\n`).join("");
  if (addGenerationPrompt) text += "Assistant:";
  return text;
}

/**
 * Renders `messages` as a prompt with the chat template in GGUF metadata `meta`. The template sees
 * `messages`, `bos_token`, `eos_token`, `add_generation_prompt`, `date_string` and `tools = none`
 * (`strftime_now` and `raise_exception` are built into the Jinja engine). Without a template the
 * fallback layouts described in this module are used. Template errors throw {@link BadFileError}
 * naming `tokenizer.chat_template`; malformed messages throw {@link BadFlagError}.
 */
export function renderChat(
  meta: Readonly<Record<string, unknown>>,
  messages: readonly ChatMessage[],
  options: ChatOptions = {},
): RenderedChat {
  checkMessages(messages);
  const addGenerationPrompt = options.addGenerationPrompt ?? true;
  const bos = tokenText(meta, "tokenizer.ggml.bos_token_id");
  const eos = tokenText(meta, "tokenizer.ggml.eos_token_id");
  const startsWith = (text: string) => bos.length > 0 && text.startsWith(bos);
  const source = meta["tokenizer.chat_template"];

  if (source === undefined || (typeof source === "string" && source.trim() === "")) {
    if (meta["tokenizer.ggml.model"] === "llama") {
      const text = renderLlama2(messages, bos, eos);
      return { text, template: "fallback", layout: "llama2", startsWithBos: startsWith(text) };
    }
    const text = renderPlain(messages, addGenerationPrompt);
    return { text, template: "fallback", layout: "plain", startsWithBos: startsWith(text) };
  }
  if (typeof source !== "string") {
    throw inFile(
      options.source,
      new BadFileError(`metadata tokenizer.chat_template: expected a string, got ${typeof source}`),
    );
  }

  let text: string;
  try {
    let template = parsedTemplates.get(source);
    if (template === undefined) {
      template = new Template(source);
      parsedTemplates.set(source, template);
    }
    text = template.render({
      messages: messages.map((m) => ({ role: m.role, content: m.content })),
      bos_token: bos,
      eos_token: eos,
      add_generation_prompt: addGenerationPrompt,
      date_string: options.dateString ?? chatDateString(),
      tools: null,
    });
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    throw inFile(
      options.source,
      new BadFileError(`tokenizer.chat_template: ${oneLine(message)}`, { cause: e }),
    );
  }
  return { text, template: "model", layout: "model", startsWithBos: startsWith(text) };
}

/** How a rendered conversation goes on from the prompt of an earlier turn and the reply that followed it. */
export interface ChatContinuation {
  /** Text the template writes between the earlier prompt and the reply's content (e.g. " " or ""). */
  lead: string;
  /** Text the template writes after the reply's content to end its turn (e.g. `<|eot_id|>`, ` </s>`). */
  closing: string;
  /** The rest of the rendering: the messages after the reply and the generation prompt. */
  next: string;
  /** The whole rendering: `previousPrompt + lead + reply content + closing + next`. */
  text: string;
}

/** Stands for the reply's content while finding where the template puts it. */
const REPLY_MARK = "\u{F8FF}reply\u{F8FF}";

/**
 * Splits the rendering of `messages` (generation prompt added) around the assistant message
 * `messages[replyIndex]`, which answered `previousPrompt`: the prompt rendered, generation prompt added, for
 * the messages before it (with the same `options`). The whole rendering is exactly `previousPrompt + lead +
 * content + closing + next`, so a session that holds `previousPrompt` and the reply can go on with the tokens
 * of `closing + next`. Undefined when it is not so: the template renders the earlier conversation
 * differently once it goes on (it rewrites, drops or reorders earlier turns), or fails on it.
 */
export function renderContinuation(
  meta: Readonly<Record<string, unknown>>,
  messages: readonly ChatMessage[],
  replyIndex: number,
  previousPrompt: string,
  options: Omit<ChatOptions, "addGenerationPrompt"> = {},
): ChatContinuation | undefined {
  const reply = messages[replyIndex];
  if (reply?.role !== "assistant") return undefined;
  try {
    const framed =
      renderChat(meta, [...messages.slice(0, replyIndex), { role: "assistant", content: REPLY_MARK }], {
        ...options,
        addGenerationPrompt: false,
      }).text;
    if (!framed.startsWith(previousPrompt)) return undefined;
    const frame = framed.slice(previousPrompt.length).split(REPLY_MARK);
    if (frame.length !== 2) return undefined;
    const [lead, closing] = frame;
    const history = previousPrompt + lead + reply.content + closing;
    const text = renderChat(meta, messages, { ...options, addGenerationPrompt: true }).text;
    if (!text.startsWith(history)) return undefined;
    return { lead, closing, next: text.slice(history.length), text };
  } catch (e) {
    if (e instanceof BadFileError) return undefined;
    throw e;
  }
}

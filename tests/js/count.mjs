// count.mjs DIR FILE: the number of prompt tokens of the chat request in FILE ({"messages": [...]})
// as Hugging Face renders and tokenizes it (apply_chat_template with the generation prompt), with
// @huggingface/transformers on the tokenizer files in DIR. The independent reference for kvgate's
// exact counts.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const req = createRequire(path.join(here, 'package.json'));
const tf = await import(pathToFileURL(req.resolve('@huggingface/transformers')).href);
tf.env.allowRemoteModels = false;

const [dir, file] = process.argv.slice(2);
const tok = await tf.AutoTokenizer.from_pretrained(path.resolve(dir), { local_files_only: true });
const body = JSON.parse(fs.readFileSync(file, 'utf8'));
const text = tok.apply_chat_template(body.messages, { tokenize: false, add_generation_prompt: true });
console.log(tok.encode(text, { add_special_tokens: false }).length);

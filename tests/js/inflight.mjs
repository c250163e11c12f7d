// inflight.mjs: the most streams a kvup had in flight at once, for tests/integ/security_limits.sh.
//   node inflight.mjs KVUP_PORT STOPFILE
// Polls GET /kvup/stats every 5 ms; in flight = streams_started - streams_completed -
// streams_cancelled - streams_died. Stops when STOPFILE exists and prints {"max","samples"}.
import http from 'node:http';
import { existsSync } from 'node:fs';

const [port, stop] = process.argv.slice(2);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
let max = 0;
let samples = 0;
const get = () => new Promise((res) => {
  http.get({ host: '127.0.0.1', port, path: '/kvup/stats', agent }, (r) => {
    let b = '';
    r.on('data', (d) => { b += d; });
    r.on('end', () => res(b));
  }).on('error', () => res(null));
});
while (!existsSync(stop)) {
  const b = await get();
  if (b) {
    const j = JSON.parse(b);
    const n = j.streams_started - j.streams_completed - j.streams_cancelled - j.streams_died;
    if (n > max) max = n;
    samples++;
  }
  await new Promise((r) => setTimeout(r, 5));
}
process.stdout.write(JSON.stringify({ max, samples }) + '\n');
agent.destroy();

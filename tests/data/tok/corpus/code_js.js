'use strict';
const http = require('node:http');

function debounce(fn, ms = 350) {
  let t = null;
  return (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn.apply(this, args), ms);
  };
}

const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ ok: true, echo: body?.prompt ?? null, n: [1, 2, 3].map(x => x ** 2) }));
});
server.listen(8080, '127.0.0.1', () => console.log(`listening on ${server.address().port}`));

// OpenClaw's Control UI against keel in headless Chromium (run by scripts/browser-test.sh,
// which sets the environment below). Every wait is bounded; the first failed check ends the
// run with a message saying what the page did, and the screenshots taken so far stay.
//
// KEEL_BIN, KEEL_STATE (a generated state with the dashboard installed), BROWSER_OUT,
// CHROMIUM (the browser binary), PLAYWRIGHT_DIR (playwright-core's directory).

import { createRequire } from 'node:module';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_DIR);
const KEEL = process.env.KEEL_BIN;
const STATE = process.env.KEEL_STATE;
const OUT = process.env.BROWSER_OUT;
const TOKEN = `browser-${crypto.randomBytes(12).toString('hex')}`;
const REPLY = ['Hello ', 'from the ', 'fake provider', ', streamed.'];
const BOUND_MS = 30_000;

const log = (...a) => console.error('[browser-test]', ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function fail(msg) {
  const e = new Error(msg);
  e.check = true;
  throw e;
}

/** Waits until `pred()` is truthy (polled), at most `ms`; returns its value or fails with `what`. */
async function until(what, pred, ms = BOUND_MS) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > end) fail(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------------------------
// A model provider on loopback speaking openai-completions: every turn streams REPLY.

function fakeProvider() {
  const requests = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', async () => {
      requests.push({ url: req.url, body });
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
      const chunk = (delta, finish = null) =>
        `data: ${JSON.stringify({
          id: 'chatcmpl-browser', object: 'chat.completion.chunk', created: 1_700_000_000,
          model: 'm1', choices: [{ index: 0, delta, finish_reason: finish }],
        })}\n\n`;
      res.write(chunk({ role: 'assistant', content: '' }));
      for (const t of REPLY) {
        await sleep(120);
        res.write(chunk({ content: t }));
      }
      res.write(chunk({}, 'stop'));
      res.write(`data: ${JSON.stringify({
        id: 'chatcmpl-browser', object: 'chat.completion.chunk', created: 1_700_000_000,
        model: 'm1', choices: [],
        usage: { prompt_tokens: 12, completion_tokens: 8, total_tokens: 20 },
      })}\n\n`);
      res.end('data: [DONE]\n\n');
    });
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve({ server, requests, port: server.address().port })));
}

// ---------------------------------------------------------------------------------------------
// keel

function writeConfig(providerPort) {
  const file = path.join(STATE, 'keel.json');
  const cfg = fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')) : {};
  cfg.models ??= {};
  cfg.models.providers ??= {};
  cfg.models.providers.fake = {
    baseUrl: `http://127.0.0.1:${providerPort}/v1`, apiKey: 'fake-key', api: 'openai-completions',
    models: [{ id: 'm1', name: 'Fake model' }],
  };
  cfg.agents ??= {};
  cfg.agents.defaults ??= {};
  cfg.agents.defaults.model = { primary: 'fake/m1' };
  cfg.gateway ??= {};
  cfg.gateway.controlUi = { ...(cfg.gateway.controlUi ?? {}), root: path.join(STATE, 'control-ui') };
  const out = path.join(OUT, 'keel.json');
  fs.writeFileSync(out, JSON.stringify(cfg, null, 2));
  return out;
}

async function startKeel(config, port = 0) {
  const logFile = fs.openSync(path.join(OUT, 'keel.log'), 'a');
  const proc = spawn(KEEL, ['serve', '--port', String(port), '--config', config, '--state-dir', STATE], {
    env: { ...process.env, KEEL_GATEWAY_TOKEN: TOKEN, KEEL_LOG: 'info' },
    stdio: ['ignore', logFile, 'pipe'],
  });
  let text = '';
  const listening = new Promise((resolve, reject) => {
    proc.stderr.on('data', (d) => {
      text += d;
      fs.writeSync(logFile, d);
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(text);
      if (m) resolve(Number(m[1]));
    });
    proc.on('exit', (code) => reject(new Error(`keel exited (${code}) before listening:\n${text}`)));
    setTimeout(() => reject(new Error(`keel did not listen within ${BOUND_MS} ms:\n${text}`)), BOUND_MS);
  });
  const p = await listening;
  return { proc, port: p };
}

async function stopKeel(k) {
  const exited = new Promise((r) => k.proc.on('exit', r));
  k.proc.kill('SIGTERM');
  const t = setTimeout(() => k.proc.kill('SIGKILL'), 15_000);
  await exited;
  clearTimeout(t);
}

async function rpc(port, method, params) {
  const res = await fetch(`http://127.0.0.1:${port}/api/rpc/${method}`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${TOKEN}`, 'Content-Type': 'application/json' },
    body: JSON.stringify(params ?? {}),
  });
  const body = await res.json();
  if (!body.ok) fail(`${method} failed: ${JSON.stringify(body.error)}`);
  return body.payload;
}

// ---------------------------------------------------------------------------------------------
// The page, watched: its exceptions, its WebSocket frames, its navigations.

function watch(page) {
  const w = {
    problems: [], hellos: 0, navigations: 0, route: '(start)', requests: new Map(), answers: [],
  };
  page.on('pageerror', (e) => w.problems.push(`uncaught exception on ${w.route}: ${e.message}`));
  page.on('framenavigated', (f) => {
    if (f === page.mainFrame()) w.navigations++;
  });
  page.on('websocket', (ws) => {
    ws.on('framesent', (f) => {
      try {
        const m = JSON.parse(f.payload);
        if (m.type === 'req') w.requests.set(m.id, { method: m.method, params: m.params, route: w.route });
      } catch { /* not JSON */ }
    });
    ws.on('framereceived', (f) => {
      let m;
      try { m = JSON.parse(f.payload); } catch { return; }
      if (m.type !== 'res') return;
      const req = w.requests.get(m.id) ?? { method: '?' };
      if (m.ok && m.payload?.type === 'hello-ok') w.hellos++;
      if (!m.ok && /unknown method/i.test(m.error?.message ?? '')) {
        w.problems.push(`"${m.error.message}" on ${req.route}`);
      }
      w.answers.push({ ...req, ok: m.ok, payload: m.payload, error: m.error });
    });
  });
  return w;
}

async function expectConnected(page, w, since, label) {
  await until(`${label}: a hello-ok from keel`, () => w.hellos > since);
  // The app renders its shell once connected; a login gate would replace it.
  await sleep(1500);
  const gates = await page.locator('.login-gate').count();
  if (gates > 0) fail(`${label}: the login gate is shown`);
}

async function visit(page, w, port, route, name) {
  w.route = route;
  const hellos = w.hellos;
  await page.goto(`http://127.0.0.1:${port}${route}`, { waitUntil: 'domcontentloaded' });
  await expectConnected(page, w, hellos, route);
  await sleep(2500); // the page's own calls, after hello
  await page.screenshot({ path: path.join(OUT, `${name}.png`), fullPage: false });
  log(`${route}: connected, screenshot ${name}.png`);
}

/** "12.3K", "1.2M", "987" → a number, and the unit of its last digit. */
function parseCompact(text) {
  const m = /([\d.,]+)\s*([KMB])?/i.exec(text.replace(/\s+/g, ' '));
  if (!m) return null;
  const digits = m[1].replace(/,/g, '');
  const scale = { K: 1e3, M: 1e6, B: 1e9 }[(m[2] ?? '').toUpperCase()] ?? 1;
  const decimals = (digits.split('.')[1] ?? '').length;
  return { value: Number(digits) * scale, unit: scale / 10 ** decimals };
}

async function checkUsage(page, w, port) {
  const answer = await until('the Usage page to load sessions.usage', () =>
    w.answers.filter((a) => a.method === 'sessions.usage' && a.ok && !a.params?.key).at(-1));
  const p = answer.params;
  const shown = answer.payload?.totals?.totalTokens;
  const cost = await rpc(port, 'usage.cost', {
    startDate: p.startDate, endDate: p.endDate, mode: p.mode, timeZone: p.timeZone, utcOffset: p.utcOffset,
  });
  const expected = cost.totals.totalTokens;
  log(`usage: page's sessions.usage ${JSON.stringify({ startDate: p.startDate, endDate: p.endDate, timeZone: p.timeZone })} totals ${shown} tokens; usage.cost ${expected}`);
  if (shown !== expected) fail(`the Usage page's total tokens ${shown} differ from usage.cost's ${expected}`);
  if (!(expected > 0)) fail(`usage.cost found no tokens in the page's range: ${JSON.stringify(cost.totals)}`);
  // What the page shows: the activity card's total, rounded as the page rounds it.
  const text = await page.locator('.usage-mosaic-total').first().innerText({ timeout: BOUND_MS });
  const n = parseCompact(text);
  if (!n || Math.abs(n.value - expected) > n.unit) {
    fail(`the Usage page shows "${text.trim()}", not ${expected} tokens`);
  }
  log(`usage: the page shows "${text.trim().replace(/\s+/g, ' ')}"`);
}

async function checkChat(page, w) {
  const box = page.locator('textarea').first();
  await box.waitFor({ state: 'visible', timeout: BOUND_MS });
  await box.fill('Hello keel, from the browser test');
  await box.press('Enter');
  await page.getByText(REPLY.join('').trim(), { exact: false }).first()
    .waitFor({ state: 'visible', timeout: BOUND_MS })
    .catch(() => fail('the fake provider\'s streamed reply did not appear on the Chat page'));
  await page.screenshot({ path: path.join(OUT, 'chat-reply.png') });
  const sent = w.answers.find((a) => a.method === 'chat.send');
  log(`chat: reply shown (chat.send answered ${sent?.ok ? 'ok' : JSON.stringify(sent?.error)})`);
}

/**
 * The Automations page: a job added over HTTP and run once (its receipt finished `ok`) is
 * listed by name with its last run shown as ok.
 */
async function seedJob(port) {
  const name = 'browser-test-pulse';
  const job = await rpc(port, 'cron.add', {
    name, schedule: { kind: 'every', everyMs: 3_600_000 }, sessionTarget: 'isolated',
    payload: { kind: 'agentTurn', message: 'A scheduled turn from the browser test' },
  });
  const ran = await rpc(port, 'cron.run', { id: job.id, mode: 'force' });
  if (!ran.ran) fail(`cron.run did not start a run: ${JSON.stringify(ran)}`);
  await until('the scheduled run to finish ok', async () => {
    const runs = await rpc(port, 'cron.runs', { id: job.id });
    return runs.entries.find((e) => e.status === 'ok');
  });
  log(`automations: job ${job.id} added and run once`);
  return { id: job.id, name };
}

async function checkAutomations(page, w, job) {
  const listed = await until('cron.list with the job on the Automations page', () =>
    w.answers.filter((a) => a.method === 'cron.list' && a.ok).flatMap((a) => a.payload?.jobs ?? [])
      .find((j) => j.id === job.id));
  if (listed.lastRunStatus !== 'ok') fail(`cron.list gave the page lastRunStatus ${listed.lastRunStatus}`);
  await page.getByText(job.name, { exact: false }).first()
    .waitFor({ state: 'visible', timeout: BOUND_MS })
    .catch(() => fail(`the Automations page does not show the job "${job.name}"`));
  await page.locator('.cron-last-glyph--ok').first()
    .waitFor({ state: 'visible', timeout: BOUND_MS })
    .catch(() => fail('the Automations page does not show the job\'s last run as ok'));
  await page.screenshot({ path: path.join(OUT, 'automations-job.png') });
  log(`automations: "${job.name}" listed with its last run ok`);
}

async function main() {
  fs.mkdirSync(OUT, { recursive: true });
  const provider = await fakeProvider();
  const config = writeConfig(provider.port);
  let keel = await startKeel(config);
  const port = keel.port;
  log(`keel on 127.0.0.1:${port}, fake provider on ${provider.port}, output in ${OUT}`);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM, headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
  const page = await (await browser.newContext({ viewport: { width: 1440, height: 900 } })).newPage();
  const w = watch(page);
  try {
    await visit(page, w, port, `/#token=${TOKEN}`, 'home');
    await visit(page, w, port, '/usage', 'usage');
    await checkUsage(page, w, port);
    await visit(page, w, port, '/sessions', 'sessions');
    await visit(page, w, port, '/chat', 'chat');
    await checkChat(page, w);
    await visit(page, w, port, '/logs', 'logs');
    const job = await seedJob(port);
    await visit(page, w, port, '/automations', 'automations');
    await checkAutomations(page, w, job);
    await visit(page, w, port, '/settings/connection', 'connection');

    // A reload: connected again from what the page stored, once.
    w.route = '/usage (reload)';
    let hellos = w.hellos;
    let navs = w.navigations;
    await page.goto(`http://127.0.0.1:${port}/usage`);
    await page.reload();
    await expectConnected(page, w, hellos, 'after a reload');
    await sleep(3000);
    if (w.navigations - navs > 2) fail(`the page reloaded itself ${w.navigations - navs - 2} more time(s) after a reload`);

    // A keel restart on the same port: the page reconnects on its own, without reloading.
    w.route = '/usage (keel restarted)';
    hellos = w.hellos;
    navs = w.navigations;
    await stopKeel(keel);
    keel = await startKeel(config, port);
    await expectConnected(page, w, hellos, 'after a keel restart');
    await sleep(3000);
    if (w.navigations !== navs) fail(`the page reloaded ${w.navigations - navs} time(s) after a keel restart`);
    await page.screenshot({ path: path.join(OUT, 'after-restart.png') });
    log('reconnected after a reload and after a keel restart, no reload loop');

    if (w.problems.length) fail(`problems on the pages:\n  ${w.problems.join('\n  ')}`);
    log(`ok: ${w.answers.length} answers, ${w.hellos} connections, screenshots in ${OUT}`);
  } finally {
    const methods = {};
    for (const a of w.answers) methods[a.method] = (methods[a.method] ?? 0) + 1;
    fs.writeFileSync(path.join(OUT, 'report.json'), JSON.stringify({ problems: w.problems, methods }, null, 2));
    await page.screenshot({ path: path.join(OUT, 'last.png') }).catch(() => {});
    await browser.close();
    await stopKeel(keel);
    provider.server.close();
  }
}

main().catch((e) => {
  console.error(`browser-test: FAILED: ${e.message}`);
  process.exit(1);
});

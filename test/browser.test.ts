/**
 * A real browser as an MQTT client: headless Chromium loads examples/browser/index.html, which
 * uses the mqtt package's browser bundle over WebSocket (listeners.ws.default). The page's own
 * message comes back to it, then a TCP client and the page exchange messages both ways; the
 * page reports its result with a request to the test's static server. Skipped, saying so, only
 * where Chromium is not installed (scripts/test-deps.sh installs the Debian package chromium).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { client, Inbox, startBroker, subscribe, waitForMessage, within } from './helpers/broker.js';
import { api } from './helpers/ops.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CHROMIUM = ['chromium', 'chromium-browser', 'google-chrome'].find(
  (c) => !spawnSync(c, ['--version']).error,
);

test('headless Chromium: the browser example publishes and receives over MQTT/WebSocket', {
  timeout: 90_000,
  skip: CHROMIUM
    ? false
    : 'Chromium is not installed (apt-get install chromium; scripts/test-deps.sh does it)',
}, async (t) => {
  const broker = await startBroker(t, {
    'listeners.ws.default.enable': true,
    'listeners.ws.default.bind': '127.0.0.1:0',
  });
  const tcp = await client(t, broker, { clientId: 'browser-peer' });
  const inbox = new Inbox(tcp);
  await subscribe(tcp, 'browser/from-browser', 1);

  // The page and the bundle, and the endpoint the page reports to.
  let report: (result: string) => void = () => {};
  const reported = new Promise<string>((resolve) => {
    report = resolve;
  });
  const files: Record<string, [string, string]> = {
    '/index.html': [join(ROOT, 'examples/browser/index.html'), 'text/html'],
    '/mqtt.min.js': [join(ROOT, 'node_modules/mqtt/dist/mqtt.min.js'), 'text/javascript'],
  };
  const http = createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    if (u.pathname === '/done') {
      report(u.searchParams.get('result') ?? '');
      res.end();
      return;
    }
    const f = files[u.pathname];
    if (!f) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': f[1] }).end(readFileSync(f[0]));
  });
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  t.after(() => http.close());
  const httpPort = (http.address() as { port: number }).port;
  const wsUrl = `ws://127.0.0.1:${broker.listenerPorts['ws:default']}/mqtt`;
  const page = `http://127.0.0.1:${httpPort}/index.html?url=${encodeURIComponent(wsUrl)}&topic=browser&report=/done`;

  const profile = mkdtempSync(join(tmpdir(), 'emqx-ts-chromium-'));
  const chrome = spawn(
    CHROMIUM!,
    [
      '--headless=new',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--no-first-run',
      `--user-data-dir=${profile}`,
      page,
    ],
    // Its own process group: the renderer and helper processes end with it.
    { stdio: ['ignore', 'ignore', 'pipe'], detached: true },
  );
  let stderr = '';
  chrome.stderr!.on('data', (d) => {
    stderr += d;
  });
  t.after(async () => {
    if (chrome.exitCode === null && chrome.signalCode === null) {
      const gone = once(chrome, 'exit');
      process.kill(-chrome.pid!, 'SIGKILL');
      await gone;
    }
    rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  });

  // Round trip 1 happened in the page (its own message came back), then it published to us.
  const fromBrowser = await within(
    waitForMessage(inbox, (m) => m.topic === 'browser/from-browser'),
    `the browser's message (chromium said: ${stderr.slice(-500)})`,
    60_000,
  );
  assert.equal(fromBrowser.payload, 'browser is here');
  const clients: { clientid: string; listener: string }[] = (await api(broker, 'GET', '/clients')).json.data;
  assert.ok(
    clients.some((c) => c.listener === 'ws:default' && c.clientid.startsWith('browser-')),
    'the page is a ws client',
  );
  tcp.publish('browser/to-browser', 'hello browser', { qos: 1 });
  assert.equal(await within(reported, 'the page to report', 60_000), 'ok: hello browser');
});

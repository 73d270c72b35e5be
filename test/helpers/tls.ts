/** Certificates made at test time with openssl (never committed): a CA, a server and client certificates. */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Ctx } from './base.js';

export interface TestPki {
  dir: string;
  caCert: string;
  serverCert: string;
  serverKey: string;
  /** Signed by the CA, subject CN=client-1, O=emqx-ts test */
  clientCert: string;
  clientKey: string;
  /** Self-signed by another CA: a verify_peer listener refuses it */
  rogueCert: string;
  rogueKey: string;
  read(path: string): Buffer;
}

function openssl(dir: string, ...args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Signs a key's CSR with `ca`; `ext` is an openssl extensions section. */
function issue(dir: string, name: string, subject: string, ca: string, ext: string): void {
  openssl(
    dir,
    ...`req -newkey rsa:2048 -nodes -keyout ${name}.key -out ${name}.csr -subj`.split(' '),
    subject,
  );
  writeFileSync(join(dir, `${name}.ext`), ext);
  const sign = `x509 -req -in ${name}.csr -CA ${ca}.crt -CAkey ${ca}.key -CAcreateserial -out ${name}.crt`;
  openssl(dir, ...`${sign} -days 2 -sha256 -extfile ${name}.ext`.split(' '));
}

function selfSignedCa(dir: string, name: string, subject: string): void {
  const req = `req -x509 -newkey rsa:2048 -nodes -keyout ${name}.key -out ${name}.crt -days 2`;
  const ext = '-addext basicConstraints=critical,CA:TRUE -addext keyUsage=keyCertSign,cRLSign';
  openssl(dir, ...req.split(' '), '-subj', subject, ...ext.split(' '));
}

/** Makes a fresh PKI in a temp dir (removed after the test). */
export function makePki(t: Ctx): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'emqx-ts-pki-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  selfSignedCa(dir, 'ca', '/CN=emqx-ts test CA');
  issue(
    dir,
    'server',
    '/CN=localhost',
    'ca',
    'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n',
  );
  issue(dir, 'client', '/O=emqx-ts test/CN=client-1', 'ca', 'extendedKeyUsage=clientAuth\n');
  selfSignedCa(dir, 'rogue-ca', '/CN=rogue CA');
  issue(dir, 'rogue', '/CN=rogue-client', 'rogue-ca', 'extendedKeyUsage=clientAuth\n');
  const p = (f: string): string => join(dir, f);
  return {
    dir,
    caCert: p('ca.crt'),
    serverCert: p('server.crt'),
    serverKey: p('server.key'),
    clientCert: p('client.crt'),
    clientKey: p('client.key'),
    rogueCert: p('rogue.crt'),
    rogueKey: p('rogue.key'),
    read: (path: string) => readFileSync(path),
  };
}

/** Broker options for the ssl and wss listeners on ephemeral ports with this PKI's server certificate. */
export function tlsListeners(pki: TestPki, extra: Record<string, unknown> = {}): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const l of ['ssl', 'wss']) {
    out[`listeners.${l}.default.bind`] = '127.0.0.1:0';
    out[`listeners.${l}.default.ssl_options.certfile`] = pki.serverCert;
    out[`listeners.${l}.default.ssl_options.keyfile`] = pki.serverKey;
    out[`listeners.${l}.default.ssl_options.cacertfile`] = pki.caCert;
  }
  return { ...out, ...extra };
}

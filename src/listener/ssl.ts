import { readFileSync } from 'node:fs';
import { createServer, type SecureVersion, type TLSSocket, type TlsOptions } from 'node:tls';
import type { Config } from '../config/schema.js';
import { Counter } from '../metrics/counters.js';
import type { AcceptMeta, AcceptorHost, TransportServer } from './acceptor.js';
import { listenerKey } from './listeners.js';

const VERSIONS: Record<string, SecureVersion> = { 'tlsv1.2': 'TLSv1.2', 'tlsv1.3': 'TLSv1.3' };

/**
 * Server TLS options of the ssl or wss listener from its `ssl_options`: files are read here, so
 * building them again (SIGHUP) picks up renewed certificates. Throws on a missing file or an
 * unknown version.
 */
export function tlsOptions(cfg: Config, type: 'ssl' | 'wss'): TlsOptions {
  const opt = (o: string): string | boolean | number => cfg[listenerKey(type, `ssl_options.${o}`)];
  const versions = String(opt('versions'))
    .split(',')
    .map((v) => v.trim().toLowerCase())
    .filter((v) => v !== '')
    .map((v) => {
      const known = VERSIONS[v];
      if (!known) throw new Error(`unknown TLS version '${v}' (tlsv1.2, tlsv1.3)`);
      return known;
    })
    .sort();
  if (versions.length === 0) throw new Error('no TLS version enabled');
  const verifyPeer = opt('verify') === 'verify_peer';
  const ca = String(opt('cacertfile'));
  const ciphers = String(opt('ciphers'));
  return {
    cert: readFileSync(String(opt('certfile'))),
    key: readFileSync(String(opt('keyfile'))),
    ca: ca ? readFileSync(ca) : undefined,
    minVersion: versions[0],
    maxVersion: versions[versions.length - 1],
    ciphers: ciphers ? ciphers.split(/[,:]/).join(':') : undefined,
    requestCert: verifyPeer,
    // Refused in the handshake only when a certificate is required; otherwise a client without
    // one may connect and one with a bad one is refused after the handshake (tlsPeer).
    rejectUnauthorized: verifyPeer && opt('fail_if_no_peer_cert') === true,
    handshakeTimeout: Number(opt('handshake_timeout')) * 1000,
  };
}

/**
 * After the handshake: with verify_peer a certificate the CA does not sign is refused (one that
 * is absent was refused in the handshake if fail_if_no_peer_cert); peer_cert_as_username takes
 * the certificate's CN or subject. Returns null when refused (the socket is destroyed).
 */
export function tlsPeer(a: AcceptorHost, socket: TLSSocket, type: 'ssl' | 'wss'): AcceptMeta | null {
  const cfg = a.opts.config;
  const verifyPeer = cfg[listenerKey(type, 'ssl_options.verify')] === 'verify_peer';
  const cert =
    verifyPeer || cfg['mqtt.peer_cert_as_username'] !== 'disabled'
      ? socket.getPeerX509Certificate()
      : undefined;
  if (verifyPeer && cert && !socket.authorized) {
    a.refused(
      Counter.tlsPeerCertRefused,
      `client certificate refused: ${socket.authorizationError}`,
      `${socket.remoteAddress}:${socket.remotePort}`,
    );
    socket.destroy();
    return null;
  }
  const mode = cfg['mqtt.peer_cert_as_username'];
  if (!cert || mode === 'disabled') return {};
  // X509Certificate.subject is one "KEY=value" per line, most significant first.
  const subject = cert.subject.split('\n');
  if (mode === 'dn') return { username: subject.join(',') };
  const cn = subject.find((s) => s.startsWith('CN='));
  return cn ? { username: cn.slice(3) } : {};
}

/** Counts and logs a failed handshake (not TLS, bad or missing client certificate, timeout). */
export function onTlsClientError(
  a: AcceptorHost,
  err: Error,
  socket: { remoteAddress?: string; remotePort?: number },
): void {
  a.refused(
    Counter.tlsHandshakeErrors,
    `TLS handshake failed: ${err.message}`,
    `${socket.remoteAddress}:${socket.remotePort}`,
  );
}

/**
 * MQTT over TLS (`listeners.ssl.default`). The TLS state lives in this thread, so a connection
 * whose owner is another shard is carried there through a tunnel (tunnel.ts), not as an fd.
 */
export function sslServer(a: AcceptorHost): TransportServer {
  const server = createServer(
    { ...tlsOptions(a.opts.config, 'ssl'), noDelay: true, highWaterMark: a.highWaterMark },
    (socket) => {
      const meta = tlsPeer(a, socket, 'ssl');
      if (meta) a.accept(socket, meta);
    },
  );
  server.on('tlsClientError', (err, socket) => {
    onTlsClientError(a, err, socket);
    socket.destroy();
  });
  return { server, rebuildOnReload: true };
}

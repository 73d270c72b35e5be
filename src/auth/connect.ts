import type { Socket } from 'node:net';
import { ClientAuth } from '../authz/authorize.js';
import type { Config } from '../config/schema.js';
import type { ShardSecurity } from '../hooks/security.js';
import type { AuthAnswer, AuthResult, ClientInfo, ConnectRequest, Hook } from '../hooks/types.js';
import type { Logger } from '../log.js';
import { Counter, type Counters, PACKETS_SENT_BY_TYPE } from '../metrics/counters.js';
import { encodeConnack, encodeConnackV5 } from '../protocol/codec.js';
import { PacketType } from '../protocol/constants.js';
import type { ConnectionOrigin } from '../threads/messages.js';

export interface AuthHost {
  readonly config: Config;
  readonly counters: Counters;
  readonly log: Logger;
  readonly security: ShardSecurity;
}

type Refusal = 'bad_credentials' | 'not_authorized' | 'banned';

function asAnswer(r: AuthResult): AuthAnswer {
  return typeof r === 'string' ? { result: r } : r;
}

function isThenable(v: unknown): v is PromiseLike<AuthResult> {
  return typeof (v as { then?: unknown })?.then === 'function';
}

/**
 * Authenticates a CONNECT in its owner shard, before takeover or any session work: the hooks
 * providing onConnectAuthenticate are tried in order (module hooks, then auth.chain), `ignore`
 * passes on; when none decides, auth.allow_anonymous does. A synchronous chain answers in the
 * same call; an async one leaves the socket paused (reads buffer) for at most auth.timeout. A
 * refusal is CONNACK 0x86/0x87 (MQTT 5) or return code 4/5 (3.x), then close, and no session
 * is made [MQTT-3.2.2-6].
 */
export function authenticate(
  host: AuthHost,
  socket: Socket,
  h: ConnectionOrigin,
  proceed: (auth: ClientAuth) => void,
): void {
  const c = h.connect;
  const info: ClientInfo = {
    clientId: c.clientId,
    username: c.username,
    peerhost: h.remoteAddress,
    protocolVersion: c.protocolVersion,
    superuser: false,
    acl: null,
    attrs: null,
  };
  const cfg = host.config;
  const row = host.counters.row;
  const ban = host.security.banned.find(c.clientId, c.username, h.remoteAddress, Date.now());
  if (ban) {
    row[Counter.bannedRefused]++;
    refuse(host, socket, h, 'banned', `banned (${ban.as} ${ban.who})`);
    return;
  }
  if (cfg['auth.clientid_must_match_username'] && c.username !== c.clientId) {
    refuse(host, socket, h, 'not_authorized', 'client id does not match username');
    return;
  }
  const list = host.security.hooks.auth;
  if (list.length === 0) {
    finish(host, socket, h, info, { result: 'ignore' }, proceed);
    return;
  }
  const pw = c.password;
  const req: ConnectRequest = {
    ...info,
    // A CONNECT handed over by another shard came by structured clone: a Uint8Array.
    password: pw ? Buffer.from(pw.buffer, pw.byteOffset, pw.length) : null,
  };
  let i = 0;
  let timer: NodeJS.Timeout | null = null;
  let settled = false;
  const onClose = (): void => {
    settled = true;
    if (timer) clearTimeout(timer);
  };
  // Runs the chain from hook i; returns when it has to wait for a promise.
  const step = (): void => {
    while (i < list.length) {
      const hook = list[i++];
      let r: AuthResult | PromiseLike<AuthResult>;
      try {
        r = hook.onConnectAuthenticate!(req);
      } catch (err) {
        host.security.hooks.failed(hook, 'onConnectAuthenticate', err);
        return done({ result: 'deny' });
      }
      if (isThenable(r)) {
        wait(hook, r);
        return;
      }
      const a = asAnswer(r);
      if (a.result !== 'ignore') return done(a);
    }
    done({ result: 'ignore' });
  };
  const wait = (hook: Hook, p: PromiseLike<AuthResult>): void => {
    if (!timer) {
      socket.on('error', noop);
      socket.once('close', onClose);
      timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        row[Counter.authnTimeouts]++;
        host.log.warn({ clientId: c.clientId, hook: hook.id }, 'authentication timed out; client refused');
        refuse(host, socket, h, 'not_authorized', 'authentication timed out');
      }, cfg['auth.timeout'] * 1000);
    }
    p.then(
      (r) => {
        if (settled) return;
        const a = asAnswer(r);
        if (a.result !== 'ignore') done(a);
        else step();
      },
      (err) => {
        if (settled) return;
        host.security.hooks.failed(hook, 'onConnectAuthenticate', err);
        done({ result: 'deny' });
      },
    );
  };
  const done = (a: AuthAnswer): void => {
    if (settled) return;
    settled = true;
    if (timer) {
      clearTimeout(timer);
      socket.removeListener('close', onClose);
      socket.removeListener('error', noop);
    }
    // The client went away while the chain ran: nothing to attach.
    if (socket.destroyed) return;
    finish(host, socket, h, info, a, proceed);
  };
  step();
}

function noop(): void {}

function finish(
  host: AuthHost,
  socket: Socket,
  h: ConnectionOrigin,
  info: ClientInfo,
  a: AuthAnswer,
  proceed: (auth: ClientAuth) => void,
): void {
  const row = host.counters.row;
  if (a.result === 'deny') {
    refuse(host, socket, h, a.reason ?? 'bad_credentials', 'authentication failed');
    return;
  }
  if (a.result === 'ignore') {
    if (!host.config['auth.allow_anonymous']) {
      // Nobody knew the client: credentials given are bad ones, none given is not authorised.
      const given = h.connect.username !== null || h.connect.password !== null;
      refuse(
        host,
        socket,
        h,
        given ? 'bad_credentials' : 'not_authorized',
        'no provider accepted the client',
      );
      return;
    }
    row[Counter.authnSuccessAnonymous]++;
  } else {
    info.superuser = a.superuser === true;
    info.acl = a.acl ?? null;
    info.attrs = a.attrs ?? null;
  }
  row[Counter.authnSuccess]++;
  try {
    proceed(new ClientAuth(info));
  } catch (err) {
    // After an async answer nothing above would catch it: this connection ends, the shard lives on.
    row[Counter.threadMessageErrors]++;
    host.log.error({ err, clientId: info.clientId }, 'attaching an authenticated connection failed; closed');
    socket.destroy();
  }
}

/** CONNACK with the refusal code, counted as the connect reader counts its refusals, then close. */
export function refuse(
  host: AuthHost,
  socket: Socket,
  h: ConnectionOrigin,
  why: Refusal,
  reason: string,
): void {
  const row = host.counters.row;
  if (why !== 'banned') row[Counter.authnFailure]++;
  row[Counter.connectRejected]++;
  const v5 = h.connect.protocolVersion === 5;
  // MQTT 5: 0x86 bad credentials, 0x87 not authorized, 0x8A banned; 3.x: 4, 5, 5.
  const code =
    why === 'bad_credentials' ? (v5 ? 0x86 : 4) : why === 'banned' ? (v5 ? 0x8a : 5) : v5 ? 0x87 : 5;
  const frame = v5 ? encodeConnackV5(code) : encodeConnack(false, code);
  row[Counter.packetsSent]++;
  row[Counter.bytesSent] += frame.length;
  row[PACKETS_SENT_BY_TYPE + PacketType.CONNACK]++;
  row[Counter.packetsConnackError]++;
  row[Counter.packetsConnackAuthError]++;
  host.log.info(
    { clientId: h.connect.clientId, username: h.connect.username, remote: h.remoteAddress, reason },
    'connection refused: not authenticated',
  );
  if (socket.destroyed) return;
  socket.on('error', noop);
  socket.end(frame);
  socket.destroySoon();
}

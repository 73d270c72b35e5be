import { randomBytes } from 'node:crypto';
import { linkSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { ConfigError } from '../config/load.js';
import type { Config } from '../config/schema.js';
import type { Logger } from '../log.js';

export interface ApiCredentials {
  key: string;
  secret: string;
  /** Where they come from: the configuration, or the key file in node.data_dir */
  source: 'config' | 'file';
  file?: string;
}

export const API_KEY_FILE = 'api_key';

/**
 * The REST API's key and secret. There is no default pair: either both are configured
 * (`api.key`, `api.secret`), or a random pair is generated at the first start and kept in
 * `<node.data_dir>/api_key` (one `key:secret` line, mode 0600, like EMQX's bootstrap file), and
 * later starts read it back. The log names the file, never the secret.
 */
export function loadOrCreateCredentials(config: Config, log: Logger): ApiCredentials {
  const key = config['api.key'];
  const secret = config['api.secret'];
  if (key || secret) {
    if (!key || !secret) throw new ConfigError("options 'api.key' and 'api.secret' must be set together");
    return { key, secret, source: 'config' };
  }
  const dir = resolve(config['node.data_dir']);
  const file = resolve(dir, API_KEY_FILE);
  const existing = readKeyFile(file);
  if (existing) return { ...existing, source: 'file', file };
  const generated = { key: randomBytes(8).toString('hex'), secret: randomBytes(24).toString('base64url') };
  // Written whole to a temporary file, then linked into place: link() never overwrites, so two
  // brokers starting at once on one data dir agree on one pair, and nobody reads half a file.
  const tmp = `${file}.${process.pid}.${randomBytes(4).toString('hex')}`;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    writeFileSync(tmp, `${generated.key}:${generated.secret}\n`, { mode: 0o600, flag: 'wx' });
    linkSync(tmp, file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      const raced = readKeyFile(file);
      if (raced) return { ...raced, source: 'file', file };
    }
    throw new ConfigError(`cannot create the REST API key file ${file}: ${(err as Error).message}`);
  } finally {
    // Under a path that is not a directory even this throws (ENOTDIR): the error above matters.
    try {
      rmSync(tmp, { force: true });
    } catch {}
  }
  log.info({ file, key: generated.key }, 'REST API key generated; key and secret are in this file');
  return { ...generated, source: 'file', file };
}

function readKeyFile(file: string): { key: string; secret: string } | null {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return null;
  }
  const line = text.split('\n').find((l) => l.includes(':'));
  if (!line) return null;
  const i = line.indexOf(':');
  const key = line.slice(0, i).trim();
  const secret = line.slice(i + 1).trim();
  return key && secret ? { key, secret } : null;
}

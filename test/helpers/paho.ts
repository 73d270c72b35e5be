/** Eclipse Paho (python3-paho-mqtt) fixtures: finding a python3 that has it, running a script. */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { type Ctx, LineReader } from './base.js';

export const PAHO_SCRIPT = fileURLToPath(new URL('../fixtures/paho_client.py', import.meta.url));
export const PAHO5_SCRIPT = fileURLToPath(new URL('../fixtures/paho5_client.py', import.meta.url));
const PKG = 'python3-paho-mqtt';

/** A running child process with its stdout and stderr read line by line. */
export interface Proc {
  child: ChildProcess;
  out: LineReader;
  err: LineReader;
}

/** Spawns a command, killed at the end of the test if still running. */
export function run(t: Ctx, cmd: string, args: string[]): Proc {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return { child, out: new LineReader(child.stdout!), err: new LineReader(child.stderr!) };
}

/**
 * A python3 that can import paho.mqtt (PYTHON, then python3 on PATH, then the system one);
 * `mqtt5`: one whose paho speaks MQTT 5. Fails the test with the package to install.
 */
export function pahoPython(mqtt5 = false): string {
  const check = mqtt5
    ? 'import paho.mqtt.client as m; m.MQTTv5; import paho.mqtt.properties'
    : 'import paho.mqtt.client';
  const candidates = [process.env.PYTHON, 'python3', '/usr/bin/python3'].filter((c): c is string => !!c);
  for (const py of candidates) {
    const r = spawnSync(py, ['-c', check], { encoding: 'utf8' });
    if (!r.error && r.status === 0) return py;
  }
  assert.fail(
    `no python3 with paho-mqtt${mqtt5 ? ' (MQTT 5 support)' : ''} among ${candidates.join(', ')}: install the Debian/Ubuntu package ${PKG} (apt-get install ${PKG})`,
  );
}

/** Runs a Paho fixture script against the broker on `port`: HOST PORT CLIENT_ID ...args. */
export function paho(t: Ctx, script: string, port: number, clientId: string, ...args: string[]): Proc {
  return run(t, pahoPython(script === PAHO5_SCRIPT), [script, '127.0.0.1', String(port), clientId, ...args]);
}

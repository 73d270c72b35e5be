import pino from 'pino';

export type Logger = pino.Logger;

/** Structured JSON logs on stdout; one line per connection event or error, never per message. */
export function createLogger(level: string, bindings: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings }, timestamp: pino.stdTimeFunctions.isoTime });
}

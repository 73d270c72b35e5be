import type { Connection } from '../shard/connection.js';

/** Handles one packet type. `body` is only valid during the call. Throws ProtocolError to close. */
export type PacketHandler = (
  conn: Connection,
  flags: number,
  body: Buffer,
  start: number,
  end: number,
) => void;

/**
 * A reader for the Erlang terms of EMQX's acl.conf: atoms, "strings", {tuples}, [lists],
 * `%` comments, each rule ending with a dot. Enough for the ACL file, nothing more.
 */
export type Term = string | { atom: string } | Term[] | { tuple: Term[] };

export function parseTerms(text: string, file = 'acl'): Term[] {
  let i = 0;
  let line = 1;
  const fail = (msg: string): never => {
    throw new Error(`${file}:${line}: ${msg}`);
  };
  const skip = (): void => {
    while (i < text.length) {
      const c = text[i];
      if (c === '\n') line++;
      if (c === '%') {
        while (i < text.length && text[i] !== '\n') i++;
      } else if (c === ' ' || c === '\t' || c === '\r' || c === '\n') i++;
      else break;
    }
  };
  const term = (): Term => {
    skip();
    const c = text[i];
    if (c === '"') {
      let s = '';
      i++;
      while (i < text.length && text[i] !== '"') {
        if (text[i] === '\\' && i + 1 < text.length) i++;
        if (text[i] === '\n') line++;
        s += text[i++];
      }
      if (text[i] !== '"') fail('unterminated string');
      i++;
      return s;
    }
    if (c === '{' || c === '[') {
      const close = c === '{' ? '}' : ']';
      i++;
      const items: Term[] = [];
      skip();
      if (text[i] === close) {
        i++;
      } else {
        for (;;) {
          items.push(term());
          skip();
          if (text[i] === ',') {
            i++;
            continue;
          }
          if (text[i] === close) {
            i++;
            break;
          }
          fail(`expected , or ${close}`);
        }
      }
      return c === '{' ? { tuple: items } : items;
    }
    if (c === "'") {
      const end = text.indexOf("'", i + 1);
      if (end < 0) fail('unterminated quoted atom');
      const a = text.slice(i + 1, end);
      i = end + 1;
      return { atom: a };
    }
    const m = /^[a-z][A-Za-z0-9_@]*/.exec(text.slice(i, i + 256));
    if (!m) return fail(`unexpected ${JSON.stringify(c ?? 'end of file')}`);
    i += m[0].length;
    return { atom: m[0] };
  };
  const out: Term[] = [];
  for (;;) {
    skip();
    if (i >= text.length) break;
    out.push(term());
    skip();
    if (text[i] !== '.') fail('expected . after a rule');
    i++;
  }
  return out;
}

export const isAtom = (t: Term, name?: string): t is { atom: string } =>
  typeof t === 'object' && t !== null && 'atom' in t && (name === undefined || t.atom === name);
export const isTuple = (t: Term): t is { tuple: Term[] } =>
  typeof t === 'object' && t !== null && 'tuple' in t;

/**
 * Who may call the API: bearer tokens (SANDBOX_API_TOKEN) and the Host-header allow-list
 * (SANDBOX_ALLOWED_HOSTS). Pure functions; app.ts runs them in an onRequest hook, before
 * any body is read.
 *
 * Tokens are compared in constant time: each side is hashed (SHA-256) first, so the
 * comparison neither depends on where the first differing byte is nor on the lengths, and
 * every configured token is compared on every request (no early exit that would tell which
 * of several rotated tokens came closest). Tokens never appear in logs, errors or answers.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

/** A checker of `Authorization` header values; null when no token is configured (open API). */
export function bearerCheck(tokens: readonly string[]): ((authorization: string | undefined) => boolean) | null {
  if (tokens.length === 0) return null;
  const expected = tokens.map(digest);
  return (authorization) => {
    const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(authorization ?? '');
    // Hashed even when malformed, so a missing header costs what a wrong one does.
    const given = digest(m?.[1] ?? '');
    let ok = false;
    for (const e of expected) ok = timingSafeEqual(given, e) || ok;
    return ok && m !== null;
  };
}

export function isLoopbackAddress(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  if (h === 'localhost' || h === '::1') return true;
  return isIP(h) === 4 && h.startsWith('127.');
}

/** Which Host headers a request may carry; `example` is one it allows (the warm-up's). */
export interface HostRule {
  allows(name: string): boolean;
  example: string;
}

/**
 * SANDBOX_ALLOWED_HOSTS resolved against the listen address, or null for any Host.
 * `auto`: when the server listens on loopback only, `localhost` and IP literals (a DNS
 * rebinding page reaches the server under a host *name* of its own; an address in Host
 * cannot be the attacker's, and the listen address itself is one); any Host otherwise.
 * `*`: any. Otherwise the listed names (lower case, without brackets) only.
 */
export function allowedHosts(setting: string, listenHost: string): HostRule | null {
  const s = setting.trim();
  if (s === '*') return null;
  if (s === 'auto') {
    if (!isLoopbackAddress(listenHost)) return null;
    return { allows: (name) => name === 'localhost' || isIP(name) !== 0, example: 'localhost' };
  }
  const names = new Set(
    s
      .split(',')
      .map((h) =>
        h
          .trim()
          .toLowerCase()
          .replace(/^\[|\]$/g, ''),
      )
      .filter(Boolean),
  );
  const first = [...names][0] ?? 'localhost';
  return { allows: (name) => names.has(name), example: first.includes(':') ? `[${first}]` : first };
}

/** The host name of a Host header, without port or IPv6 brackets, lower case. */
export function hostName(header: string | undefined): string {
  const h = (header ?? '').trim().toLowerCase();
  if (h.startsWith('[')) return h.slice(1, h.indexOf(']') > 0 ? h.indexOf(']') : undefined);
  const colon = h.lastIndexOf(':');
  // One colon: name:port. More: a bare IPv6 address (not valid in Host, but not ours to fix).
  return colon > 0 && h.indexOf(':') === colon ? h.slice(0, colon) : h;
}

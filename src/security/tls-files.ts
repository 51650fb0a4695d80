/**
 * TLS certificate and key checks at start (docs/security.md#tls). uWebSockets.js only says "App construction failed"
 * for an unreadable certificate, a key that does not parse, an encrypted key or a mismatched pair, and only
 * after the database and the workers have started; these checks name the problem up front (exit 78).
 */
import { type KeyObject, X509Certificate, createPrivateKey } from "node:crypto";
import fs from "node:fs";

/** Null when `certFile` / `keyFile` form a usable pair; otherwise what is wrong (never the key's content). */
export function tlsFilesProblem(certFile: string, keyFile: string): string | null {
  let cert: X509Certificate;
  try {
    // The first certificate of the file is the server's; the rest (if any) is its chain.
    cert = new X509Certificate(fs.readFileSync(certFile));
  } catch (err) {
    return `tlsCert: ${certFile} is not a readable PEM certificate (${(err as Error).message})`;
  }
  let key: KeyObject;
  try {
    key = createPrivateKey(fs.readFileSync(keyFile));
  } catch (err) {
    const message = (err as Error).message;
    if (/passphrase/i.test(message))
      return `tlsKey: ${keyFile} is encrypted; ingestd needs an unencrypted key file (readable only by its user)`;
    return `tlsKey: ${keyFile} is not a readable PEM private key (${message})`;
  }
  if (!cert.checkPrivateKey(key)) return `tlsCert / tlsKey: the key ${keyFile} does not belong to the certificate ${certFile}`;
  if (Date.parse(cert.validTo) < Date.now()) return `tlsCert: ${certFile} expired on ${cert.validTo}`;
  return null;
}

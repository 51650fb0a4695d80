/** Writing HTTP answers on uWS responses: status lines, JSON bodies, the headers every answer carries. */
import { logRefusal, writeContextHeaders } from "./request-context";
import type { Refusal } from "./submission/admission";
import type { HttpResponse } from "./uws";

const STATUS_LINES: Record<number, string> = {
  200: "200 OK",
  202: "202 Accepted",
  204: "204 No Content",
  207: "207 Multi-Status",
  400: "400 Bad Request",
  401: "401 Unauthorized",
  403: "403 Forbidden",
  404: "404 Not Found",
  405: "405 Method Not Allowed",
  411: "411 Length Required",
  413: "413 Content Too Large",
  415: "415 Unsupported Media Type",
  422: "422 Unprocessable Content",
  429: "429 Too Many Requests",
  500: "500 Internal Server Error",
  503: "503 Service Unavailable",
};

export function statusLine(status: number): string {
  return STATUS_LINES[status] ?? `${status} Status`;
}

export interface AnswerOptions {
  headers?: Record<string, string>;
  /** Close the connection after answering: the request body was not (fully) read. */
  close?: boolean;
  contentType?: string;
  /** The error code and message of a refusal, for its log line (see request-context.ts). */
  error?: { code: string; message: string };
}

/** Set on a response once it is answered or its client went away: nothing more may be written to it. */
export const kClosed = Symbol("ingestd.closed");

export function isClosed(res: HttpResponse): boolean {
  return (res as any)[kClosed] === true;
}

export function markClosed(res: HttpResponse): void {
  (res as any)[kClosed] = true;
}

/** Answers once; a response already answered or aborted is skipped. */
export function answer(res: HttpResponse, status: number, body: string | Uint8Array, options: AnswerOptions = {}): void {
  if (isClosed(res)) return;
  markClosed(res);
  res.cork(() => {
    res.writeStatus(statusLine(status));
    if (status !== 204) res.writeHeader("Content-Type", options.contentType ?? "application/json");
    writeContextHeaders(res);
    if (options.headers) for (const key in options.headers) res.writeHeader(key, options.headers[key]);
    res.end(body, options.close === true);
  });
  if (status >= 400) logRefusal(res, status, options.error?.code, options.error?.message);
}

export function answerJson(res: HttpResponse, status: number, value: unknown, options: AnswerOptions = {}): void {
  if (status >= 400 && options.error === undefined) options = { ...options, error: errorOf(value) };
  answer(res, status, JSON.stringify(value), options);
}

/** The `error` code and `message` of an error body, when it has them (for the refusal's log line). */
function errorOf(value: unknown): AnswerOptions["error"] {
  const v = value as { error?: unknown; status?: unknown; message?: unknown } | null;
  if (typeof v !== "object" || v === null) return undefined;
  const code = typeof v.error === "string" ? v.error : typeof v.status === "string" ? v.status : "";
  return { code, message: typeof v.message === "string" ? v.message : "" };
}

/** The error shape of every non-ingest failure: `{"status":"error","error":<code>,"message":...}`. */
export function answerError(res: HttpResponse, status: number, code: string, message: string, options: AnswerOptions = {}): void {
  answerJson(res, status, { status: "error", error: code, message }, { ...options, error: { code, message } });
}

/** A refusal from admission, as every HTTP route answers it. */
export function answerRefusal(res: HttpResponse, refusal: Refusal, close: boolean): void {
  answerError(res, refusal.status, refusal.code, refusal.message, { headers: refusal.headers, close });
}

/** Writing HTTP answers on uWS responses: status lines, JSON bodies, the headers every answer carries. */
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
export function answer(res: HttpResponse, status: number, body: string, options: AnswerOptions = {}): void {
  if (isClosed(res)) return;
  markClosed(res);
  res.cork(() => {
    res.writeStatus(statusLine(status));
    res.writeHeader("Content-Type", options.contentType ?? "application/json");
    if (options.headers) for (const key in options.headers) res.writeHeader(key, options.headers[key]);
    res.end(body, options.close === true);
  });
}

export function answerJson(res: HttpResponse, status: number, value: unknown, options: AnswerOptions = {}): void {
  answer(res, status, JSON.stringify(value), options);
}

/** The error shape of every non-ingest failure: `{"status":"error","error":<code>,"message":...}`. */
export function answerError(res: HttpResponse, status: number, code: string, message: string, options: AnswerOptions = {}): void {
  answerJson(res, status, { status: "error", error: code, message }, options);
}

/** A refusal from admission, as every HTTP route answers it. */
export function answerRefusal(res: HttpResponse, refusal: Refusal, close: boolean): void {
  answerError(res, refusal.status, refusal.code, refusal.message, { headers: refusal.headers, close });
}

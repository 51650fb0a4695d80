/**
 * The soak phase drawn as an SVG line chart (written next to the JSON report): events/s per interval on the
 * left axis, with the 2-stream COPY ceiling as a dashed line, and ack p99 on the right axis; each interval
 * shaded by the share of it in which a vacuum of the events table ran (docs/performance.md#the-soaks-dear-minutes).
 * Plain SVG text: a few lines and labels need no charting library.
 */
import type { PhaseResult } from "./load-phase";
import type { BenchReport } from "./report";

const W = 760;
const H = 360;
const LEFT = 70;
const RIGHT = 70;
const TOP = 50;
const BOTTOM = 50;

function escapeXml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** A round step giving about `ticks` ticks up to `max`. */
function niceStep(max: number, ticks: number): number {
  const raw = max / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * mag >= raw) return m * mag;
  return 10 * mag;
}

export function soakChartSvg(report: BenchReport, soak: PhaseResult, ceiling: number | null): string {
  const points = soak.intervals;
  const step = points.length > 1 ? points[1].from_s - points[0].from_s : soak.seconds;
  const xs = points.map((p) => p.from_s + step);
  const xMax = Math.max(step, ...xs);
  const rateTop = Math.max(1, ceiling ?? 0, ...points.map((p) => p.events_per_s)) * 1.1;
  const rateStep = niceStep(rateTop, 5);
  const rateMax = Math.ceil(rateTop / rateStep) * rateStep;
  const p99Top = Math.max(1, ...points.map((p) => p.p99_ms)) * 1.1;
  const p99Step = niceStep(p99Top, 5);
  const p99Max = Math.ceil(p99Top / p99Step) * p99Step;
  const plotW = W - LEFT - RIGHT;
  const plotH = H - TOP - BOTTOM;
  const x = (s: number) => LEFT + (s / xMax) * plotW;
  const yRate = (v: number) => TOP + plotH - (v / rateMax) * plotH;
  const yP99 = (v: number) => TOP + plotH - (v / p99Max) * plotH;
  const f = (n: number) => n.toFixed(1);

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
  );
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  const title = `ingestd soak: WebSocket, ${report.id_kind} ids, ${report.started_at.slice(0, 16).replace("T", " ")} UTC`;
  out.push(`<text x="${W / 2}" y="20" text-anchor="middle" font-size="14">${escapeXml(title)}</text>`);
  const load = report.machine.loadavg_at_start[0];
  out.push(
    `<text x="${W / 2}" y="36" text-anchor="middle" fill="#555">${escapeXml(`${report.machine.cores} cores, load average ${load} at start; per ${step} s interval`)}</text>`,
  );
  // Grid and left axis (events/s).
  for (let v = 0; v <= rateMax + 1e-9; v += rateStep) {
    out.push(`<line x1="${LEFT}" x2="${W - RIGHT}" y1="${f(yRate(v))}" y2="${f(yRate(v))}" stroke="#e5e5e5"/>`);
    out.push(
      `<text x="${LEFT - 6}" y="${f(yRate(v) + 4)}" text-anchor="end" fill="#1f5fbf">${Math.round(v).toLocaleString("en-US")}</text>`,
    );
  }
  for (let v = 0; v <= p99Max + 1e-9; v += p99Step) {
    out.push(`<text x="${W - RIGHT + 6}" y="${f(yP99(v) + 4)}" fill="#c0392b">${Number(v.toFixed(2))}</text>`);
  }
  const xStep = niceStep(xMax, 10);
  for (let s = 0; s <= xMax + 1e-9; s += xStep) {
    out.push(
      `<text x="${f(x(s))}" y="${H - BOTTOM + 16}" text-anchor="middle">${s >= 60 && s % 60 === 0 ? `${s / 60} min` : `${s} s`}</text>`,
    );
  }
  const vacuumed = points.filter((p) => (p.vacuum_s ?? 0) > 0);
  for (const p of vacuumed) {
    const share = Math.min(1, (p.vacuum_s ?? 0) / step);
    out.push(
      `<rect x="${f(x(p.from_s))}" y="${TOP}" width="${f(x(p.from_s + step) - x(p.from_s))}" height="${plotH}" fill="#e0a100" opacity="${(0.3 * share).toFixed(2)}"/>`,
    );
  }
  if (vacuumed.length > 0) {
    out.push(
      `<text x="${W - RIGHT - 6}" y="${TOP + plotH - 8}" text-anchor="end" fill="#8a6300">shaded: the share of the interval a vacuum of the events table ran</text>`,
    );
  }
  out.push(`<rect x="${LEFT}" y="${TOP}" width="${plotW}" height="${plotH}" fill="none" stroke="#999"/>`);
  out.push(
    `<text x="16" y="${TOP + plotH / 2}" transform="rotate(-90 16 ${TOP + plotH / 2})" text-anchor="middle" fill="#1f5fbf">events/s</text>`,
  );
  out.push(
    `<text x="${W - 14}" y="${TOP + plotH / 2}" transform="rotate(90 ${W - 14} ${TOP + plotH / 2})" text-anchor="middle" fill="#c0392b">ack p99 (ms)</text>`,
  );
  if (ceiling !== null) {
    out.push(
      `<line x1="${LEFT}" x2="${W - RIGHT}" y1="${f(yRate(ceiling))}" y2="${f(yRate(ceiling))}" stroke="#1f5fbf" stroke-dasharray="6 4" opacity="0.6"/>`,
    );
    out.push(
      `<text x="${LEFT + 6}" y="${f(yRate(ceiling) - 5)}" fill="#1f5fbf">COPY ceiling, 2 streams: ${Math.round(ceiling).toLocaleString("en-US")} rows/s</text>`,
    );
  }
  const line = (ys: number[], colour: string) =>
    `<polyline fill="none" stroke="${colour}" stroke-width="2" points="${xs.map((s, i) => `${f(x(s))},${f(ys[i])}`).join(" ")}"/>`;
  out.push(
    line(
      points.map((p) => yRate(p.events_per_s)),
      "#1f5fbf",
    ),
  );
  out.push(
    line(
      points.map((p) => yP99(p.p99_ms)),
      "#c0392b",
    ),
  );
  for (let i = 0; i < points.length; i++) {
    out.push(`<circle cx="${f(x(xs[i]))}" cy="${f(yRate(points[i].events_per_s))}" r="3" fill="#1f5fbf"/>`);
    out.push(`<circle cx="${f(x(xs[i]))}" cy="${f(yP99(points[i].p99_ms))}" r="3" fill="#c0392b"/>`);
  }
  out.push("</svg>");
  return out.join("\n") + "\n";
}

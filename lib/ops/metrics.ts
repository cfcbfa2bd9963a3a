/**
 * A small Prometheus registry: counters, gauges and histograms with labels, rendered in the text
 * exposition format. Hand-written because the roles need a few dozen series and nothing else, and
 * this stays free of runtime-specific code (prom-client leans on Node's cluster and perf hooks).
 *
 * @module
 */

type Labels = Record<string, string | number>;

function labelText(labels: Labels): string {
  const entries = Object.entries(labels);
  if (entries.length === 0) return "";
  return `{${entries.map(([key, value]) => `${key}="${String(value).replace(/["\\\n]/g, (c) => (c === "\n" ? "\\n" : `\\${c}`))}"`).join(",")}}`;
}

interface Series {
  name: string;
  help: string;
  type: "counter" | "gauge" | "histogram";
  render(): string[];
}

type Collect = () => Array<[Labels, number]>;

function renderValues(name: string, values: Map<string, number>, collect?: Collect): string[] {
  const entries = collect ? collect().map(([labels, value]) => [labelText(labels), value] as const) : [...values];
  return entries.map(([labels, value]) => `${name}${labels} ${value}`);
}

/** A monotonically increasing count, per label set, or read from `collect` at scrape time. */
export class Counter {
  readonly #values = new Map<string, number>();
  constructor(registry: Registry, name: string, help: string, collect?: Collect) {
    registry.add({ name, help, type: "counter", render: () => renderValues(name, this.#values, collect) });
  }
  /** Adds `amount` (default 1) to the series with `labels`. */
  inc(labels: Labels = {}, amount = 1): void {
    const key = labelText(labels);
    this.#values.set(key, (this.#values.get(key) ?? 0) + amount);
  }
}

/** A value that goes up and down, or is read from a function at scrape time. */
export class Gauge {
  readonly #values = new Map<string, number>();
  constructor(registry: Registry, name: string, help: string, collect?: Collect) {
    registry.add({ name, help, type: "gauge", render: () => renderValues(name, this.#values, collect) });
  }
  /** Sets the series with `labels`. */
  set(value: number, labels: Labels = {}): void {
    this.#values.set(labelText(labels), value);
  }
  /** Adds `amount` (may be negative). */
  add(amount: number, labels: Labels = {}): void {
    const key = labelText(labels);
    this.#values.set(key, (this.#values.get(key) ?? 0) + amount);
  }
}

/** Observations counted into cumulative buckets (upper bounds in the metric's unit). */
export class Histogram {
  readonly #counts: number[];
  readonly #buckets: number[];
  #sum = 0;
  #count = 0;
  constructor(registry: Registry, name: string, help: string, buckets: number[]) {
    this.#buckets = buckets;
    this.#counts = buckets.map(() => 0);
    registry.add({
      name,
      help,
      type: "histogram",
      render: () => [
        ...buckets.map((bound, i) => `${name}_bucket{le="${bound}"} ${this.#counts[i]}`),
        `${name}_bucket{le="+Inf"} ${this.#count}`,
        `${name}_sum ${this.#sum}`,
        `${name}_count ${this.#count}`,
      ],
    });
  }
  /** Records one observation. */
  observe(value: number): void {
    this.#sum += value;
    this.#count++;
    for (let i = 0; i < this.#buckets.length; i++) if (value <= this.#buckets[i]) this.#counts[i]++;
  }
}

/** The set of series a process exposes on `/metrics`. */
export class Registry {
  readonly #series: Series[] = [];
  /** @internal used by the metric classes. */
  add(series: Series): void {
    this.#series.push(series);
  }
  /** The Prometheus text exposition of every series. */
  render(): string {
    return `${this.#series
      .map((series) => [`# HELP ${series.name} ${series.help}`, `# TYPE ${series.name} ${series.type}`, ...series.render()].join("\n"))
      .join("\n")}\n`;
  }
}

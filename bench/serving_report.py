"""The serving benchmark's plot and README section, made from a results JSON.

    .venv/bin/python bench/serving_report.py             # the newest bench/results/serving-*.json
    .venv/bin/python bench/serving_report.py RESULTS.json --readme README.md --plot

The README part between the markers below is replaced whole; nothing else is touched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe

START = "<!-- bench:serving:start -->"
END = "<!-- bench:serving:end -->"
TESSERA_PREFIX = "tessera"
HEADLINE_CONCURRENCY = 32


def x_key(results: dict[str, Any]) -> str:
    """'rate' for a Poisson sweep, else 'concurrency'."""
    return "rate" if results["config"]["sweep"]["rates"] else "concurrency"


def _fmt(v: float | None, digits: int = 2) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def plot(results: dict[str, Any], path: Path) -> Path:
    """Throughput and TTFT p50/p99 against the load, one line (colour) per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = x_key(results)
    fig, (ax_tp, ax_ttft) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, server in enumerate(s for s in results["servers"] if s["points"]):
        color = f"C{i}"
        xs = [p[key] for p in server["points"]]
        ax_tp.plot(xs, [p["output_tokens_per_s"] for p in server["points"]], "o-",
                   color=color, label=server["name"])  # fmt: skip
        ax_ttft.plot(xs, [p["ttft_s"]["p50"] for p in server["points"]], "o-",
                     color=color, label=f"{server['name']} p50")  # fmt: skip
        ax_ttft.plot(xs, [p["ttft_s"]["p99"] for p in server["points"]], "s--",
                     color=color, alpha=0.6, label=f"{server['name']} p99")  # fmt: skip
    label = "request rate (req/s, Poisson)" if key == "rate" else "concurrent requests"
    ticks = sorted({p[key] for s in results["servers"] for p in s["points"]})
    for ax in (ax_tp, ax_ttft):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3, which="both")
    ax_tp.set_ylim(bottom=0)
    ax_ttft.set_yscale("log")  # servers differ by orders of magnitude under load
    ax_tp.set_ylabel("output tokens/s")
    ax_tp.set_title("Throughput")
    ax_ttft.set_ylabel("time to first token (s, log scale)")
    ax_ttft.set_title("TTFT p50 (solid) and p99 (dashed)")
    ax_tp.legend(fontsize=8)
    ax_ttft.legend(fontsize=7, ncol=2)
    m = results["machine"]
    fig.suptitle(f"Serving benchmark, {results['date'][:10]}: {m['cpu_model']}, {m['cores']} cores")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _headline(server: dict[str, Any], key: str) -> dict[str, Any] | None:
    points = server["points"]
    if not points:
        return None
    for p in points:
        if p[key] == HEADLINE_CONCURRENCY:
            return p
    return points[-1]


def _single_stream_tok_s(server: dict[str, Any]) -> float | None:
    """Decode speed of one stream: 1 / TPOT p50 at concurrency 1."""
    for p in server["points"]:
        if p.get("concurrency") == 1 and p["tpot_s"]["p50"]:
            return 1.0 / float(p["tpot_s"]["p50"])
    return None


def throughput_table(results: dict[str, Any]) -> list[str]:
    key = x_key(results)
    xs = sorted({p[key] for s in results["servers"] for p in s["points"]})
    head = "c" if key == "concurrency" else "rate"
    lines = [
        "| server | " + " | ".join(f"{head}={x}" for x in xs) + " |",
        "| --- |" + " --- |" * len(xs),
    ]
    for s in results["servers"]:
        if s["status"] != "ok" and not s["points"]:
            lines.append(f"| {s['name']} | " + " | ".join(["error"] * len(xs)) + " |")
            continue
        by_x = {p[key]: p for p in s["points"]}
        cells = [_fmt(by_x[x]["output_tokens_per_s"], 1) if x in by_x else "—" for x in xs]
        lines.append(f"| {s['name']} | " + " | ".join(cells) + " |")
    return lines


def detail_table(results: dict[str, Any]) -> list[str]:
    key = x_key(results)
    lines = [
        f"| server | {key} | output tok/s | req/s | TTFT p50 / p90 / p99 (s) | ITL p50 / p99 (ms) "
        "| e2e p50 / p99 (s) | goodput req/s (share) | errors | out tok/req | 1-stream tok/s |",
        "| --- |" + " --- |" * 10,
    ]
    for s in results["servers"]:
        p = _headline(s, key)
        if p is None:
            lines.append(f"| {s['name']} | — | error: {(s['error'] or '')[:80]} |" + " |" * 8)
            continue
        t, itl, e2e, g = p["ttft_s"], p["itl_s"], p["e2e_s"], p["goodput"]
        itl_ms = [None if v is None else v * 1000 for v in (itl["p50"], itl["p99"])]
        lines.append(
            f"| {s['name']} | {p[key]} | {_fmt(p['output_tokens_per_s'], 1)} "
            f"| {_fmt(p['requests_per_s'])} "
            f"| {_fmt(t['p50'])} / {_fmt(t['p90'])} / {_fmt(t['p99'])} "
            f"| {_fmt(itl_ms[0], 0)} / {_fmt(itl_ms[1], 0)} "
            f"| {_fmt(e2e['p50'])} / {_fmt(e2e['p99'])} "
            f"| {_fmt(g['requests_per_s'])} ({g['fraction']:.0%}) "
            f"| {p['errors']}/{p['requests']} | {_fmt(p['output_tokens_mean'], 0)} "
            f"| {_fmt(_single_stream_tok_s(s), 1)} |"
        )
    return lines


def ratio_lines(results: dict[str, Any]) -> list[str]:
    """Each Tessera server against the best peer of the same run, at the headline point and
    for single-stream decode."""
    key = x_key(results)
    servers = [s for s in results["servers"] if s["points"]]
    ours = [s for s in servers if s["name"].startswith(TESSERA_PREFIX)]
    peers = [s for s in servers if not s["name"].startswith(TESSERA_PREFIX)]
    if not ours or not peers:
        return []

    def tput(s: dict[str, Any]) -> float:
        p = _headline(s, key)
        return float(p["output_tokens_per_s"]) if p else 0.0

    best = max(peers, key=tput)
    singles = [(s, _single_stream_tok_s(s)) for s in peers]
    best_single = max(((s, v) for s, v in singles if v), key=lambda sv: sv[1], default=None)
    out = []
    for s in ours:
        line = f"- {s['name']}: {tput(s) / tput(best):.2f}x {best['name']}'s output tokens/s"
        mine = _single_stream_tok_s(s)
        if best_single and mine:
            line += (
                f"; single-stream decode {mine / best_single[1]:.2f}x {best_single[0]['name']}'s"
            )
        p = _headline(s, key)
        if p is not None:
            line += f"; TTFT p99 {_fmt(p['ttft_s']['p99'])} s"
        out.append(line)
    return out


def readme_section(results: dict[str, Any], json_path: str, png_path: str | None) -> str:
    """The Markdown that goes between the README markers."""
    m, cfg, git = results["machine"], results["config"], results["git"]
    w = cfg["workload"]
    key = x_key(results)
    failed = [s for s in results["servers"] if s["status"] != "ok"]
    dirty = " (uncommitted changes in the tree)" if git["dirty"] else ""
    parts = [
        START,
        f"<!-- generated by bench/serving_report.py from {json_path}; do not edit by hand -->",
        "",
        f"Measured {results['date']} on {describe(m)}, commit `{git['commit'][:10]}`{dirty}, with",
        "",
        f"    {results['command']}",
        "",
        f"Workload `{w['kind']}`: {w['num_requests']} sessions per point (at least the "
        f"concurrency), {w['max_tokens']} output tokens each, greedy, streamed; the same model "
        f"file (`{Path(results['model']['gguf']).name}`) and prompts for every server. Goodput "
        f"counts requests with TTFT ≤ {cfg['slo']['ttft']} s and mean inter-token latency ≤ "
        f"{cfg['slo']['itl'] * 1000:.0f} ms. Full figures: `{json_path}`.",
        "",
        "Output tokens/s:",
        "",
        *throughput_table(results),
        "",
        f"At {key} {HEADLINE_CONCURRENCY} (or the highest point run):",
        "",
        *detail_table(results),
        "",
    ]
    ratios = ratio_lines(results)
    if ratios:
        parts += ["Ratios against the best peer of the same run:", "", *ratios, ""]
    for s in failed:
        parts += [f"- {s['name']} failed: `{(s['error'] or '')[:300]}`"]
    if failed:
        parts.append("")
    if png_path:
        parts += [f"![Throughput and TTFT against load]({png_path})", ""]
    parts.append(END)
    return "\n".join(parts)


def update_readme(readme: Path, section: str) -> None:
    """Replace the text between the markers (inclusive) with section."""
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{readme} has no {START} ... {END} markers")
    readme.write_text(text[:start] + section + text[end + len(END) :], encoding="utf-8")


def newest_results(folder: Path) -> Path:
    files = sorted(folder.glob("serving-*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no serving-*.json in {folder}")
    return files[-1]


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description="plot and README table from serving results")
    parser.add_argument(
        "results", nargs="?", type=Path, help="default: the newest in bench/results"
    )
    parser.add_argument("--readme", type=Path, help="rewrite this README's benchmark section")
    parser.add_argument("--plot", action="store_true", help="(re)draw the PNG beside the JSON")
    args = parser.parse_args(argv)
    path = (args.results or newest_results(repo / "bench" / "results")).resolve()
    results = json.loads(path.read_text())
    png = path.with_suffix(".png")
    if args.plot:
        plot(results, png)
    rel = lambda p: str(p.relative_to(repo)) if p.is_relative_to(repo) else str(p)  # noqa: E731
    section = readme_section(results, rel(path), rel(png) if png.exists() else None)
    if args.readme:
        update_readme(args.readme, section)
        print(f"updated {args.readme}")
    else:
        print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())

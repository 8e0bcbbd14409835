"""The side-by-side list benchmark's figures: the table, the goals, and its BENCHMARKS.md block.

Each cell (database, route, connections) holds the rounds of both servers; medians over the
rounds are compared, and the spread of the rounds says how much to trust a ratio.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from wrk_load import WrkResult

GOAL_RATIO = 50.0
GOAL_P99_MS = 50.0
GOAL_CONNECTIONS = 16
SECTION = "## Lists under load (issue 15)"
MARKER_SCRIPT = "bench_list.py side-by-side"
SECTION_TEXT = f"""
{SECTION}

`bench/bench_list.py --side-by-side`: ours and the original conda-store-server 2025.2.2 (a
throwaway venv from PyPI with a stub `conda` module) on the same seeded data in each server's own
schema (10,000 environments in 50 namespaces, each with a specification and a completed current
build; 2,000 packages, 150 of them in build 1), one server process each, loaded in turn by
Debian's `wrk` (`-t2 -c<N>`, an admin token), rounds interleaved (ours, original, ours, ...).
Figures are medians over the rounds; "spread" is (max - min) / median of the rounds' req/s.
Goals (issue 15, item 1): every list route >= 50x the original's req/s at 16 connections, p99
< 50 ms at 16 connections, and throughput not falling from 4 to 16 connections, on SQLite and
PostgreSQL. The machine has 2 cores shared with other engineers' test runs: the load average is
recorded with the figures. Runs shorter than ~10 s leave the original few or no completed
requests at 16 and 64 connections (flagged in the table): its p99 there is its maximum, or
missing, and the ratio is rough. A server that stops answering is restarted and noted below
the goals.

<!-- {MARKER_SCRIPT}: begin (rewritten by --update-benchmarks) -->
<!-- {MARKER_SCRIPT}: end -->
"""


@dataclass
class Cell:
    ours: list[WrkResult] = field(default_factory=list)
    original: list[WrkResult] = field(default_factory=list)
    load: list[float] = field(default_factory=list)  # 1-minute load average before/after each run
    # seconds until each side's server was idle again after its runs
    drain: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "original": []})


def median_rps(runs: list[WrkResult]) -> float:
    return statistics.median(r.requests_per_second for r in runs)


def median_p99(runs: list[WrkResult]) -> float:
    return statistics.median(r.p99_ms for r in runs)


def spread(runs: list[WrkResult]) -> float:
    """(max - min) / median of req/s over the rounds, in percent; 0 with one round."""
    values = [r.requests_per_second for r in runs]
    middle = statistics.median(values)
    return 100 * (max(values) - min(values)) / middle if middle else 0.0


def ratio(cell: Cell) -> float | None:
    if not cell.original or not cell.ours:
        return None
    original = median_rps(cell.original)
    return median_rps(cell.ours) / original if original else None


def errors(runs: list[WrkResult]) -> int:
    return sum(r.errors for r in runs)


Results = dict[str, dict[str, dict[int, Cell]]]  # database -> route -> connections -> cell


def table(results: Results, descriptions: dict[str, str]) -> str:
    lines: list[str] = []
    for database, routes in results.items():
        lines.append(f"{database}:")
        lines.append(
            f"  {'route':34} {'conns':>5} {'ours req/s':>10} {'orig req/s':>10} {'ratio':>7}"
            f" {'ours p50/p99 ms':>16} {'orig p50/p99 ms':>16} {'spread ours/orig':>17} {'load':>9}"
        )
        for route, cells in routes.items():
            for connections, cell in cells.items():
                lines.append("  " + row(descriptions.get(route, route), connections, cell))
        lines.append("")
    return "\n".join(lines).rstrip()


FEW_REQUESTS = 100  # fewer completed requests per run than this: its p99 is close to its maximum


def measured(runs: list[WrkResult]) -> list[WrkResult]:
    """Runs that completed a request; a run of a server slower than the run is long has none."""
    return [r for r in runs if r.requests > 0]


def row(description: str, connections: int, cell: Cell) -> str:
    def latency(runs: list[WrkResult]) -> str:
        if not runs:
            return "-"
        if not measured(runs):
            return "none done"
        done = measured(runs)
        return f"{statistics.median(r.p50_ms for r in done):.1f}/{median_p99(done):.1f}"

    def rps(runs: list[WrkResult]) -> str:
        return f"{median_rps(runs):.1f}" if runs else "-"

    factor = ratio(cell)
    spreads = f"{spread(cell.ours):.0f}%" + (f"/{spread(cell.original):.0f}%" if cell.original else "")
    load = f"{min(cell.load):.1f}-{max(cell.load):.1f}" if cell.load else "-"
    text = (
        f"{description:34} {connections:>5} {rps(cell.ours):>10} {rps(cell.original):>10}"
        f" {(f'{factor:.1f}x' if factor else '-'):>7} {latency(cell.ours):>16} {latency(cell.original):>16}"
        f" {spreads:>17} {load:>9}"
    )
    if errors(cell.ours) + errors(cell.original):
        text += f"  ERRORS ours {errors(cell.ours)} orig {errors(cell.original)}"
    for side, runs in (("ours", cell.ours), ("orig", cell.original)):
        if runs and min(r.requests for r in runs) < FEW_REQUESTS:
            text += f"  {side}: {min(r.requests for r in runs)} requests in a run"
    for side, waits in cell.drain.items():
        if waits and max(waits) >= 1:
            text += f"  {side} busy {max(waits):.0f} s after a run"
    return text


def goals(results: Results, descriptions: dict[str, str]) -> str:
    """One line per database and route: each goal met or not, with the figure it was judged on."""
    lines = [
        f"goals at {GOAL_CONNECTIONS} connections: ratio >= {GOAL_RATIO:.0f}x,"
        f" ours p99 < {GOAL_P99_MS:.0f} ms, ours req/s at {GOAL_CONNECTIONS} >= at 4"
    ]
    met = total = 0
    for database, routes in results.items():
        for route, cells in routes.items():
            judged: list[str] = []
            cell = cells.get(GOAL_CONNECTIONS)
            if cell is not None and cell.ours and not measured(cell.ours):
                judged.append(verdict(False, "ours completed no request"))
            elif cell is not None and measured(cell.ours):
                factor = ratio(cell)
                if factor is not None:
                    judged.append(verdict(factor >= GOAL_RATIO, f"{factor:.1f}x"))
                elif cell.original:
                    judged.append("?   (the original completed no request: use longer --seconds)")
                p99 = median_p99(measured(cell.ours))
                judged.append(verdict(p99 < GOAL_P99_MS, f"p99 {p99:.0f} ms"))
                four = cells.get(4)
                if four is not None and four.ours:
                    before, after = median_rps(four.ours), median_rps(cell.ours)
                    judged.append(verdict(after >= before, f"4->16 {before:.0f}->{after:.0f} req/s"))
            if not judged:
                continue
            met += sum(j.startswith("yes") for j in judged)
            total += len(judged)
            lines.append(f"  {database:10} {descriptions.get(route, route):34} " + "   ".join(judged))
    lines.append(f"  {met} of {total} goals met")
    return "\n".join(lines)


def verdict(ok: bool, figure: str) -> str:
    return f"{'yes' if ok else 'NO '} ({figure})"


def ensure_section(benchmarks: Path) -> None:
    """Appends the section with its markers when BENCHMARKS.md has none, so that
    update_benchmarks has a block to rewrite; other sections are left as they are."""
    text = benchmarks.read_text() if benchmarks.exists() else ""
    if f"<!-- {MARKER_SCRIPT}: begin" in text:
        return
    benchmarks.write_text(text.rstrip("\n") + "\n" + SECTION_TEXT)

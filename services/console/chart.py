"""The overview's chart: settled (net) and paid amounts per day as bars of a
server-rendered SVG. Heights are integer arithmetic on minor units, like the amounts."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 900, 240, 8, 22, 8


@dataclass(frozen=True)
class Bar:
    x: int
    y: int
    width: int
    height: int
    css: str
    title: str
    amount: int


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: list[Bar]
    labels: list[tuple[int, str]]
    baseline: int
    maximum: int
    days: int


def daily_chart(days: list[dt.date], settled: dict[dt.date, int],
                paid: dict[dt.date, int]) -> Chart:
    plot = HEIGHT - PAD_BOTTOM - PAD_TOP
    top = max([1, *settled.values(), *paid.values()])
    slot = (WIDTH - PAD_LEFT) // max(1, len(days))
    bar_w = max(2, (slot - 4) // 2)
    bars: list[Bar] = []
    labels: list[tuple[int, str]] = []
    for i, day in enumerate(days):
        x = PAD_LEFT + i * slot
        for j, (series, css, name) in enumerate(
                ((settled, "settled", "settled"), (paid, "paid", "paid"))):
            amount = max(0, series.get(day, 0))
            h = amount * plot // top
            bars.append(Bar(x + j * bar_w, PAD_TOP + plot - h, bar_w, h, css,
                            f"{day.isoformat()} {name}", amount))
        if i % 5 == 0 or i == len(days) - 1:
            labels.append((x, day.strftime("%m-%d")))
    return Chart(WIDTH, HEIGHT, bars, labels, PAD_TOP + plot, top, len(days))

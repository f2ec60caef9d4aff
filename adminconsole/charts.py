"""Server-rendered inline SVG charts: no JavaScript, no CDN (the gateway may have no internet).

Every chart has a title, a labelled y axis with round tick values, x labels thinned to stay legible,
a legend for several series, and a <title> tooltip on each bar or point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

PALETTE = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899", "#84cc16", "#64748b",
           "#f97316", "#0ea5e9"]

Formatter = Callable[[float], str]


def compact(value: float) -> str:
    """1234 -> 1.2k, 5600000 -> 5.6M."""
    value = float(value)
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            text = f"{value / size:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{value:.0f}" if value == int(value) else f"{value:.2f}"


def usd_from_micro(value: float) -> str:
    dollars = float(value) / 1_000_000
    if dollars >= 1000:
        return "$" + compact(dollars)
    if dollars >= 1:
        return f"${dollars:,.2f}"
    if dollars == 0:
        return "$0"
    return f"${dollars:.4f}".rstrip("0")


def _nice_step(maximum: float, ticks: int = 4) -> float:
    if maximum <= 0:
        return 1.0
    raw = maximum / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power  # pragma: no cover


def _axis(maximum: float, fmt: Formatter) -> tuple[float, list[tuple[float, str]]]:
    step = _nice_step(maximum)
    top = max(step, math.ceil(maximum / step) * step) if maximum > 0 else step
    count = int(round(top / step))
    return top, [(i * step, fmt(i * step)) for i in range(count + 1)]


def _thin(labels: Sequence[str], most: int = 10) -> set[int]:
    if len(labels) <= most:
        return set(range(len(labels)))
    every = math.ceil(len(labels) / most)
    shown = set(range(0, len(labels), every))
    shown.add(len(labels) - 1)
    return shown


class _Frame:
    def __init__(self, *, width: int, height: int, left: int = 64, right: int = 16, top: int = 34,
                 bottom: int = 46) -> None:
        self.width, self.height = width, height
        self.left, self.right, self.top, self.bottom = left, right, top, bottom
        self.plot_w = width - left - right
        self.plot_h = height - top - bottom
        self.parts: list[str] = []

    def y(self, value: float, top_value: float) -> float:
        return self.top + self.plot_h - (value / top_value) * self.plot_h if top_value else self.top + self.plot_h

    def text(self, x: float, y: float, text: str, *, anchor: str = "middle", size: int = 11, cls: str = "",
             extra: str = "") -> None:
        self.parts.append(
            f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" class="{cls}" {extra}>'
            f"{escape(text)}</text>"
        )

    def axes(self, *, title: str, y_label: str, x_label: str, ticks: list[tuple[float, str]], top_value: float,
             x_labels: Sequence[str], x_positions: Sequence[float]) -> None:
        self.text(self.left, 18, title, anchor="start", size=13, cls="chart-title", extra='font-weight="600"')
        for value, label in ticks:
            y = self.y(value, top_value)
            self.parts.append(f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{y:.1f}" y2="{y:.1f}" '
                              f'class="grid" stroke="#e5e7eb"/>')
            self.text(self.left - 6, y + 4, label, anchor="end", size=10, cls="tick")
        base = self.top + self.plot_h
        self.parts.append(f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{base}" y2="{base}" '
                          f'stroke="#374151" class="axis x-axis"/>')
        self.parts.append(f'<line x1="{self.left}" x2="{self.left}" y1="{self.top}" y2="{base}" stroke="#374151" '
                          f'class="axis y-axis"/>')
        for i in _thin(x_labels):
            self.text(x_positions[i], base + 14, x_labels[i], size=10, cls="tick")
        self.text(self.left + self.plot_w / 2, self.height - 6, x_label, size=11, cls="axis-label")
        mid = self.top + self.plot_h / 2
        self.text(14, mid, y_label, size=11, cls="axis-label", extra=f'transform="rotate(-90 14 {mid:.1f})"')

    def legend(self, names: Sequence[str]) -> None:
        x = self.width - self.right
        for index, name in reversed(list(enumerate(names))):
            width = 14 + 6.2 * len(name)
            x -= width + 10
            color = PALETTE[index % len(PALETTE)]
            self.parts.append(f'<rect x="{x:.1f}" y="8" width="10" height="10" fill="{color}" class="legend-key"/>')
            self.text(x + 14, 17, name, anchor="start", size=10, cls="legend")

    def render(self, css_class: str, aria: str) -> SafeString:
        body = "".join(self.parts)
        return mark_safe(  # noqa: S308 - every text node above went through escape()
            f'<svg class="chart {css_class}" viewBox="0 0 {self.width} {self.height}" width="100%" '
            f'role="img" aria-label="{escape(aria)}" xmlns="http://www.w3.org/2000/svg">{body}</svg>'
        )


def stacked_bar_chart(labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], *, title: str,
                      y_label: str, x_label: str = "day (UTC)", fmt: Formatter = compact, width: int = 760,
                      height: int = 260) -> SafeString:
    """One bar per label; each series a coloured segment. One series = a plain bar chart."""
    frame = _Frame(width=width, height=height)
    totals = [sum(values[i] for _, values in series) for i in range(len(labels))]
    top_value, ticks = _axis(max(totals, default=0), fmt)
    slot = frame.plot_w / max(len(labels), 1)
    bar_w = max(1.0, slot * 0.72)
    centers = [frame.left + slot * i + slot / 2 for i in range(len(labels))]
    frame.axes(title=title, y_label=y_label, x_label=x_label, ticks=ticks, top_value=top_value, x_labels=labels,
               x_positions=centers)
    for i, label in enumerate(labels):
        base = 0.0
        for index, (name, values) in enumerate(series):
            value = values[i]
            if value <= 0:
                continue
            y_top, y_base = frame.y(base + value, top_value), frame.y(base, top_value)
            color = PALETTE[index % len(PALETTE)]
            tip = f"{label} · {name}: {fmt(value)}" if len(series) > 1 else f"{label}: {fmt(value)}"
            frame.parts.append(
                f'<rect class="bar" x="{centers[i] - bar_w / 2:.1f}" y="{y_top:.1f}" width="{bar_w:.1f}" '
                f'height="{max(0.5, y_base - y_top):.1f}" fill="{color}"><title>{escape(tip)}</title></rect>'
            )
            base += value
    if len(series) > 1:
        frame.legend([name for name, _ in series])
    if not any(totals):
        frame.text(frame.left + frame.plot_w / 2, frame.top + frame.plot_h / 2, "no usage in this period",
                   cls="empty", size=12)
    return frame.render("bar-chart", title)


def bar_chart(labels: Sequence[str], values: Sequence[float], **kwargs) -> SafeString:
    return stacked_bar_chart(labels, [("", values)], **kwargs)


def line_chart(labels: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], *, title: str, y_label: str,
               x_label: str = "day (UTC)", fmt: Formatter = compact, width: int = 760,
               height: int = 260) -> SafeString:
    frame = _Frame(width=width, height=height)
    top_value, ticks = _axis(max((max(v, default=0) for _, v in series), default=0), fmt)
    step = frame.plot_w / max(len(labels) - 1, 1)
    xs = [frame.left + step * i for i in range(len(labels))] if len(labels) > 1 else [frame.left + frame.plot_w / 2]
    frame.axes(title=title, y_label=y_label, x_label=x_label, ticks=ticks, top_value=top_value, x_labels=labels,
               x_positions=xs)
    for index, (name, values) in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        points = " ".join(f"{xs[i]:.1f},{frame.y(v, top_value):.1f}" for i, v in enumerate(values))
        frame.parts.append(f'<polyline class="line" fill="none" stroke="{color}" stroke-width="2" '
                           f'points="{points}"><title>{escape(name)}</title></polyline>')
        for i, value in enumerate(values):
            frame.parts.append(
                f'<circle class="point" cx="{xs[i]:.1f}" cy="{frame.y(value, top_value):.1f}" r="2.5" '
                f'fill="{color}"><title>{escape(f"{labels[i]} · {name}: {fmt(value)}")}</title></circle>'
            )
    frame.legend([name for name, _ in series])
    if not series or not any(any(v) for _, v in series):
        frame.text(frame.left + frame.plot_w / 2, frame.top + frame.plot_h / 2, "no usage in this period",
                   cls="empty", size=12)
    return frame.render("line-chart", title)


def hbar_chart(labels: Sequence[str], values: Sequence[float], *, title: str, x_label: str,
               fmt: Formatter = compact, width: int = 760) -> SafeString:
    """Horizontal bars, largest first (e.g. top tenants); the value is printed at each bar's end."""
    row = 22
    frame = _Frame(width=width, height=34 + row * max(len(labels), 1) + 40, left=170, right=70, bottom=40)
    top_value, ticks = _axis(max(values, default=0), fmt)
    frame.text(frame.left, 18, title, anchor="start", size=13, cls="chart-title", extra='font-weight="600"')
    base_y = frame.top + frame.plot_h
    for value, label in ticks:
        x = frame.left + (value / top_value) * frame.plot_w
        frame.parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{frame.top}" y2="{base_y}" stroke="#e5e7eb" '
                           f'class="grid"/>')
        frame.text(x, base_y + 14, label, size=10, cls="tick")
    frame.parts.append(f'<line x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" y2="{base_y}" '
                       f'stroke="#374151" class="axis y-axis"/>')
    frame.parts.append(f'<line x1="{frame.left}" x2="{frame.width - frame.right}" y1="{base_y}" y2="{base_y}" '
                       f'stroke="#374151" class="axis x-axis"/>')
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = frame.top + i * row + 3
        w = (value / top_value) * frame.plot_w if top_value else 0
        short = label if len(label) <= 24 else label[:23] + "…"
        frame.text(frame.left - 6, y + 12, short, anchor="end", size=11, cls="tick")
        frame.parts.append(f'<rect class="bar" x="{frame.left}" y="{y:.1f}" width="{max(w, 0.5):.1f}" '
                           f'height="{row - 6}" fill="{PALETTE[0]}"><title>{escape(f"{label}: {fmt(value)}")}'
                           f"</title></rect>")
        frame.text(frame.left + w + 4, y + 12, fmt(value), anchor="start", size=10, cls="value")
    frame.text(frame.left + frame.plot_w / 2, frame.height - 6, x_label, size=11, cls="axis-label")
    if not labels:
        frame.text(frame.left + frame.plot_w / 2, frame.top + 14, "no usage in this period", cls="empty", size=12)
    return frame.render("hbar-chart", title)

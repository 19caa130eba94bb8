#!/usr/bin/env python3
"""Render the benchmark's ADD latency by configuration as a PNG bar chart.

Reads the per-sample JSON the benches write (label -> {"add": [ms, ...], ...}),
draws one bar per configuration (median) with a whisker to p95, and writes a PNG.
Standard library only (zlib, struct): no plotting package to install on a fresh
machine. Text uses a built-in 5x7 pixel font, upper case.

usage: bench-chart.py OUT.png SAMPLES.json [SAMPLES.json ...]
"""
import json
import struct
import sys
import zlib

FONT = {
    "A": "01110100011000111111100011000110001", "B": "11110100011000111110100011000111110",
    "C": "01110100011000010000100001000101110", "D": "11110100011000110001100011000111110",
    "E": "11111100001000011110100001000011111", "F": "11111100001000011110100001000010000",
    "G": "01110100011000010111100011000101111", "H": "10001100011000111111100011000110001",
    "I": "01110001000010000100001000010001110", "J": "00111000100001000010000101001001100",
    "K": "10001100101010011000101001001010001", "L": "10000100001000010000100001000011111",
    "M": "10001110111010110101100011000110001", "N": "10001100011100110101100111000110001",
    "O": "01110100011000110001100011000101110", "P": "11110100011000111110100001000010000",
    "Q": "01110100011000110001101011001001101", "R": "11110100011000111110101001001010001",
    "S": "01111100001000001110000010000111110", "T": "11111001000010000100001000010000100",
    "U": "10001100011000110001100011000101110", "V": "10001100011000110001100010101000100",
    "W": "10001100011000110101101011010101010", "X": "10001100010101000100010101000110001",
    "Y": "10001100010101000100001000010000100", "Z": "11111000010001000100010001000011111",
    "0": "01110100011001110101110011000101110", "1": "00100011000010000100001000010001110",
    "2": "01110100010000100010001000100011111", "3": "11111000100010000010000011000101110",
    "4": "00010001100101010010111110001000010", "5": "11111100001111000001000011000101110",
    "6": "00110010001000011110100011000101110", "7": "11111000010001000100010000100001000",
    "8": "01110100011000101110100011000101110", "9": "01110100011000101111000010001001100",
    " ": "0" * 35, ".": "00000000000000000000000000110001100",
    ",": "00000000000000000000001100010001000", "-": "00000000000000011111000000000000000",
    "+": "00000001000010011111001000010000000", "(": "00010001000100001000010000010000010",
    ")": "01000001000001000010000100010001000", "/": "00000000010001000100010001000000000",
    ":": "00000011000110000000011000110000000", "%": "11000110010001000100010001001100011",
    "×": "00000100010101000100010101000100000", "=": "00000000001111100000111110000000000",
    "_": "00000000000000000000000000000011111", "'": "00100001000100000000000000000000000",
}


def png(width, height, pixels):
    """pixels: bytearray of RGB rows."""
    raw = b"".join(b"\x00" + bytes(pixels[y * width * 3:(y + 1) * width * 3]) for y in range(height))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


class Canvas:
    def __init__(self, w, h):
        self.w, self.h = w, h
        self.px = bytearray(b"\xff" * (w * h * 3))

    def rect(self, x0, y0, x1, y1, rgb):
        for y in range(max(0, int(y0)), min(self.h, int(y1))):
            row = y * self.w * 3
            for x in range(max(0, int(x0)), min(self.w, int(x1))):
                self.px[row + x * 3:row + x * 3 + 3] = bytes(rgb)

    def text(self, x, y, s, rgb=(30, 30, 30), scale=2):
        for ch in s.upper():
            glyph = FONT.get(ch, FONT[" "])
            for i, bit in enumerate(glyph):
                if bit == "1":
                    gx, gy = i % 5, i // 5
                    self.rect(x + gx * scale, y + gy * scale, x + (gx + 1) * scale, y + (gy + 1) * scale, rgb)
            x += 6 * scale

    def save(self, path):
        with open(path, "wb") as f:
            f.write(png(self.w, self.h, self.px))


def percentile(xs, p):
    s = sorted(xs)
    k = max(1, -(-len(s) * p // 100))
    return s[int(k) - 1]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    rows = []
    for path in sys.argv[2:]:
        with open(path) as f:
            data = json.load(f)
        for label, series in data.items():
            # Section 3 (200 concurrent ADDs) measures throughput, not latency.
            if label.startswith("3."):
                continue
            add = series.get("add") if isinstance(series, dict) else None
            if add:
                rows.append((label.split(". ", 1)[-1], percentile(add, 50), percentile(add, 95)))
    if not rows:
        sys.exit("no ADD samples found")
    label_w, bar_w, row_h, top = 560, 620, 34, 70
    c = Canvas(label_w + bar_w + 120, top + row_h * len(rows) + 60)
    c.text(20, 20, "Whole-process ADD latency by configuration (ms): bar = median, line = p95", scale=2)
    scale = bar_w / max(p95 for _, _, p95 in rows)
    for i, (label, p50, p95) in enumerate(rows):
        y = top + i * row_h
        c.text(20, y + 8, label[:44], scale=2)
        c.rect(label_w, y + 6, label_w + p50 * scale, y + row_h - 6, (70, 130, 180))
        c.rect(label_w + p50 * scale, y + row_h // 2 - 1, label_w + p95 * scale, y + row_h // 2 + 1, (40, 40, 40))
        c.rect(label_w + p95 * scale - 1, y + 10, label_w + p95 * scale + 1, y + row_h - 10, (40, 40, 40))
        c.text(label_w + p95 * scale + 8, y + 8, f"{p50:.1f}/{p95:.1f}", scale=2)
    c.rect(label_w - 1, top - 4, label_w + 1, top + row_h * len(rows), (0, 0, 0))
    c.save(sys.argv[1])


if __name__ == "__main__":
    main()

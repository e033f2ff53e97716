#!/usr/bin/env python3
"""Counts the pixels of a PNG close to given colours (stdlib only: zlib and struct).

Usage: png_colors.py FILE.png RRGGBB [RRGGBB...]  → prints "RRGGBB N" per colour.
Handles 8-bit RGB and RGBA, non-interlaced: what Chromium's --screenshot writes.
"""
import struct
import sys
import zlib


def pixels(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * bpp
    prev = bytearray(stride)
    i = 0
    for _ in range(h):
        f, line = raw[i], bytearray(raw[i + 1:i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        yield from (tuple(line[k:k + 3]) for k in range(0, stride, bpp))
        prev = line


def main():
    want = [tuple(int(c[k:k + 2], 16) for k in (0, 2, 4)) for c in sys.argv[2:]]
    counts = [0] * len(want)
    for px in pixels(sys.argv[1]):
        for j, c in enumerate(want):
            if all(abs(px[k] - c[k]) <= 24 for k in range(3)):
                counts[j] += 1
    for c, n in zip(sys.argv[2:], counts):
        print(c, n)


if __name__ == "__main__":
    main()

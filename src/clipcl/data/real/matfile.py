"""A small reader of MATLAB level-5 MAT-files (the documented format: compressed or not, either
byte order), enough for the annotation files of Stanford Cars and Oxford Flowers, so SciPy is not
needed. Numbers come out as ndarrays, char arrays as str / list[str], cells as lists and structs
as lists of dicts.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from clipcl.data.real.base import need
from clipcl.errors import ClipclError

# data element types → numpy dtypes (without byte order)
_MI_DTYPES = {
    1: "i1",
    2: "u1",
    3: "i2",
    4: "u2",
    5: "i4",
    6: "u4",
    7: "f4",
    9: "f8",
    12: "i8",
    13: "u8",
}
_MI_MATRIX, _MI_COMPRESSED, _MI_UTF8, _MI_UTF16 = 14, 15, 16, 17
# array classes
_MX_CELL, _MX_STRUCT, _MX_CHAR = 1, 2, 4
_MX_NUMERIC = {
    6: "f8",
    7: "f4",
    8: "i1",
    9: "u1",
    10: "i2",
    11: "u2",
    12: "i4",
    13: "u4",
    14: "i8",
    15: "u8",
}


class _MatFormatError(Exception):
    pass


class _Elements:
    """Sequential reader of the data elements (tag + data, 8-byte aligned) in a byte buffer."""

    def __init__(self, buf: bytes | memoryview, order: str):
        self.buf, self.order, self.pos = memoryview(buf), order, 0

    def more(self) -> bool:
        return self.pos < len(self.buf)

    def _u32(self, at: int) -> int:
        return int.from_bytes(self.buf[at : at + 4], "little" if self.order == "<" else "big")

    def next(self) -> tuple[int, memoryview]:
        if self.pos + 8 > len(self.buf):
            raise _MatFormatError(f"truncated data element at byte {self.pos}")
        first = self._u32(self.pos)
        if first >> 16:  # small data element: type and size packed in 4 bytes, data in the next 4
            kind, size = first & 0xFFFF, first >> 16
            if size > 4:
                raise _MatFormatError(f"bad small data element at byte {self.pos}")
            data = self.buf[self.pos + 4 : self.pos + 4 + size]
            self.pos += 8
            return kind, data
        kind, size = first, self._u32(self.pos + 4)
        start = self.pos + 8
        if start + size > len(self.buf):
            raise _MatFormatError(f"data element at byte {self.pos} runs past the end")
        self.pos = start + (size if kind == _MI_COMPRESSED else (size + 7) // 8 * 8)
        return kind, self.buf[start : start + size]

    def numbers(self, kind: int, data: memoryview) -> np.ndarray:
        if kind not in _MI_DTYPES:
            raise _MatFormatError(f"data type {kind} where numbers were expected")
        return np.frombuffer(data, dtype=self.order + _MI_DTYPES[kind])


def _chars(el: _Elements, kind: int, data: memoryview, dims: tuple[int, ...]) -> str | list[str]:
    if kind == _MI_UTF8:
        text = bytes(data).decode("utf-8")
    elif kind == _MI_UTF16:
        text = bytes(data).decode("utf-16-le" if el.order == "<" else "utf-16-be")
    else:
        text = "".join(map(chr, el.numbers(kind, data).tolist()))
    rows = dims[0] if dims else 0
    if rows <= 1:
        return text
    return [text[r::rows] for r in range(rows)]  # column-major: row r is every rows-th char


def _matrix(el: _Elements, payload: memoryview) -> tuple[str, Any]:
    """(name, value) of one miMATRIX element: str / list[str] for char arrays, a flat
    column-major list for cells, a list of dicts for structs, an ndarray for numbers."""
    if len(payload) == 0:  # an empty array (e.g. an empty cell)
        return "", np.zeros((0, 0))
    sub = _Elements(payload, el.order)
    kind, flags = sub.next()
    if kind != 6 or len(flags) != 8:
        raise _MatFormatError("array without array flags")
    mx = int(sub.numbers(kind, flags)[0]) & 0xFF
    dims = tuple(int(d) for d in sub.numbers(*sub.next()))
    name = bytes(sub.next()[1]).decode("ascii", errors="replace")
    count = int(np.prod(dims)) if dims else 0
    if mx == _MX_CELL:
        items = []
        for _ in range(count):
            kind, data = sub.next()
            if kind != _MI_MATRIX:
                raise _MatFormatError(f"cell element of type {kind}")
            items.append(_matrix(sub, data)[1])
        return name, items
    if mx == _MX_STRUCT:
        width = int(sub.numbers(*sub.next())[0])
        raw = bytes(sub.next()[1])
        if width <= 0:
            raise _MatFormatError("bad struct field name length")
        fields = [
            raw[i : i + width].split(b"\0")[0].decode("ascii") for i in range(0, len(raw), width)
        ]
        records = []
        for _ in range(count):
            record = {}
            for f in fields:
                kind, data = sub.next()
                if kind != _MI_MATRIX:
                    raise _MatFormatError(f"struct field {f!r} of type {kind}")
                record[f] = _matrix(sub, data)[1]
            records.append(record)
        return name, records
    if mx == _MX_CHAR:
        kind, data = sub.next() if sub.more() else (2, memoryview(b""))
        return name, _chars(sub, kind, data, dims)
    if mx in _MX_NUMERIC:
        values = sub.numbers(*sub.next()).astype(_MX_NUMERIC[mx])
        if values.size != count:
            raise _MatFormatError(f"numeric array {name!r}: {values.size} values for shape {dims}")
        return name, values.reshape(dims, order="F")
    raise _MatFormatError(f"unsupported array class {mx} (only cell, struct, char and numbers)")


def load_mat(path: Path) -> dict[str, Any]:
    """The variables of a MATLAB 5 MAT-file (``ClipclError`` naming the file when it is not one)."""
    data = need(path).read_bytes()
    if data.startswith(b"MATLAB 7.3"):
        raise ClipclError(f"{path}: a MATLAB 7.3 (HDF5) MAT-file; expected the MATLAB 5 format")
    if len(data) < 128 or not data.startswith(b"MATLAB 5.0 MAT-file"):
        raise ClipclError(f"{path}: not a MATLAB 5 MAT-file (bad header)")
    order = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if order is None:
        raise ClipclError(f"{path}: not a MATLAB 5 MAT-file (bad endian indicator)")
    variables: dict[str, Any] = {}
    top = _Elements(memoryview(data)[128:], order)
    try:
        while top.more():
            kind, payload = top.next()
            if kind == _MI_COMPRESSED:
                inner = _Elements(zlib.decompress(payload), order)
                kind, payload = inner.next()
            else:
                inner = top
            if kind == _MI_MATRIX:
                name, value = _matrix(inner, payload)
                variables[name] = value
    except (_MatFormatError, zlib.error, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise ClipclError(f"{path}: malformed MAT-file ({exc})") from None
    return variables

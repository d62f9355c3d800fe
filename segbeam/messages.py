"""Text fit to print: an error's message on one line (`one_line`), and text from files and names
made safe for a terminal (`printable`).

An image's file name, a claim or a manifest is anyone's to write: printed raw, its escape
sequences and carriage returns would rewrite the terminal (a title, hidden or overwritten
lines). `printable` escapes, visibly, every character that is not plain printable text.
Imports nothing heavy: the light modules and every command use it.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Optional


def one_line(
  error: BaseException, limit: Optional[int] = 1000, cut: str = "", *, named: bool = False
) -> str:
  """`error`'s message on one line, whatever it printed.

  Args:
    limit: the most characters (None: no limit).
    cut: what ends a message that was cut (within `limit`).
    named: the error's type name where its message is empty.
  """
  text = " ".join(str(error).split()) or (type(error).__name__ if named else "")
  if limit is None or len(text) <= limit:
    return text
  return text[: limit - len(cut)] + cut


def brief(error: BaseException) -> str:
  """`one_line` for an error quoted inside another message: at most 300 characters."""
  return one_line(error, 300, "...", named=True)


_NAMED = {"\t": r"\t", "\n": r"\n", "\r": r"\r"}
# Control, format (bidirectional overrides, zero-width), surrogate (an undecodable byte of a
# file name) and line/paragraph separator characters.
_UNSAFE_CATEGORIES = frozenset(("Cc", "Cf", "Cs", "Zl", "Zp"))
_MAYBE_UNSAFE = re.compile(r"[^\x20-\x7e]")


def _escaped(character: str) -> str:
  if character in _NAMED:
    return _NAMED[character]
  if unicodedata.category(character) not in _UNSAFE_CATEGORIES:
    return character
  code = ord(character)
  if code < 0x100:
    return f"\\x{code:02x}"
  return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object, *, keep_newlines: bool = False) -> str:
  """`text` (str() of it) with every control or other invisible character escaped as Python
  writes it in a string ('\\x1b', '\\r', '\\u202e'); newlines too unless `keep_newlines`."""
  text = str(text)

  def escape(match: re.Match) -> str:
    character = match.group()
    return character if keep_newlines and character == "\n" else _escaped(character)

  return _MAYBE_UNSAFE.sub(escape, text)


def number(value: Optional[float]) -> str:
  """A metric to 4 decimals; '-' where it is undefined (None, or NaN as older exports wrote)."""
  return "-" if value is None or math.isnan(value) else f"{value:.4f}"

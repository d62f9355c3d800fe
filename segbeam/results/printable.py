"""Text from files and names, made safe to print on a terminal.

An image's file name, a claim or a manifest is anyone's to write: printed raw, its escape
sequences and carriage returns would rewrite the terminal (a title, hidden or overwritten
lines). Every character that is not plain printable text is printed escaped, visibly.
Imports nothing heavy: the light modules (`segbeam.results`) and `segbeam run` use it.
"""

from __future__ import annotations

import re
import unicodedata

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

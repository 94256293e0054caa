"""The C text of the emitted program, as people read it: comments, long calls and declarations broken
after their commas within WIDTH columns, and `tidy`, the pass over the rendered source that removes the
whitespace template macros leave behind and breaks long lines. Only whitespace changes here: a test
compares the rendered source with and without tidy token for token."""

from __future__ import annotations

import re

WIDTH = 120  # no emitted line is longer


def _code(line: str, start: int):
    """(index, char, depth) of each character of line from `start` outside string and char literals;
    depth counts the brackets opened since `start` (a closing bracket is reported at the depth it closes)."""
    depth, quote, k = 0, "", start
    while k < len(line):
        c = line[k]
        if quote:
            k += 2 if c == "\\" else 1
            quote = "" if c == quote else quote
            continue
        if c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        yield k, c, depth
        k += 1


def wrap(line: str) -> list[str]:
    """A C declaration or call longer than WIDTH broken after the commas of its argument list, the next
    lines aligned after its parenthesis: `f(a, b,\n  c);`. Lines it cannot break (a comment, a preprocessor
    line, no argument list at the end of the line) come back as they are."""
    if len(line) <= WIDTH or line.lstrip().startswith(("#", "/*", "*", "//")) or "/*" in line or "//" in line:
        return [line]
    for i, c in enumerate(line):
        if c != "(":
            continue
        j = next((k for k, ch, d in _code(line, i) if d == 0), len(line))  # its closing parenthesis, or none
        if j < len(line) and not re.fullmatch(r"\)*\s*[;{]?", line[j + 1 :]):
            continue  # the list does not end the line
        args, start = [], i + 1
        for k, ch, d in _code(line, i + 1):
            if k >= j:
                break
            if ch == "," and d == 0:
                args.append(line[start:k].strip())
                start = k + 1
        args.append(line[start:j].strip())
        # a list the next line goes on with (j == len(line)) ends with a comma or inside its last argument (a
        # string literal the next line's continues): the comma, where there is one, stays, and only it
        last = ("," if not args[-1] else "") if j == len(line) else line[j:]
        if j == len(line):
            args = [a for a in args if a]
        if len(args) < 2:
            continue  # one argument: try a list inside it
        out, cur, pad = [], line[: i + 1], " " * (i + 1)
        for n, a in enumerate(args):
            piece = a + ("," if n + 1 < len(args) else last)
            if len(cur) + len(piece) > WIDTH and not cur.endswith("("):
                out.append(cur.rstrip())
                cur = pad
            cur += piece + " "
        return out + [cur.rstrip()]
    return [line]


def tidy(src: str) -> str:
    """The rendered source with the whitespace template macros leave behind removed (trailing blanks, a
    blank line right before a closing brace, runs of blank lines: one stays) and declarations and calls
    longer than WIDTH broken after their commas (`wrap`)."""
    lines = [x.rstrip() for x in src.split("\n")]
    out: list[str] = []
    for line in (y for n, x in enumerate(lines) for y in ([x] if n and lines[n - 1].endswith("\\") else wrap(x))):
        if not line and out and not out[-1]:
            continue  # a second blank line in a row
        if line.lstrip().startswith("}"):
            while out and not out[-1]:
                out.pop()  # no blank line before a closing brace
        out.append(line)
    return "\n".join(out)


def wrap_comment(text: str, indent: str) -> list[str]:
    """/* text */ in lines of at most WIDTH columns, broken after commas."""
    words, lines, cur = text.split(", "), [], indent + "/* "
    for i, w in enumerate(words):
        piece = w + (", " if i + 1 < len(words) else " */")
        if len(cur) + len(piece.rstrip()) > WIDTH and cur.strip() not in ("/*", "*"):
            lines.append(cur.rstrip())
            cur = indent + " * "
        cur += piece
    return lines + [cur]

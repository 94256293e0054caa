"""llmgen/codegen/text.py breaks long C lines after commas: only whitespace may change."""

import re

from llmgen.codegen.text import WIDTH, wrap


def _same_code(line: str) -> None:
    lines = wrap(line)
    assert all(len(x) <= WIDTH for x in lines), lines
    assert re.sub(r"\s+", "", "".join(lines)) == re.sub(r"\s+", "", line), lines


def test_a_call_is_broken_after_its_commas():
    line = "    f(" + ", ".join(f"argument_{i}" for i in range(20)) + ");"
    assert len(wrap(line)) > 1
    _same_code(line)


def test_a_list_the_next_line_continues_keeps_only_its_own_comma():
    # a message whose string literal the next line continues: no comma may appear after it
    head = '    llmgen_fail("%s: a long message about something that went wrong while reading the file", '
    head += "path, other_name, "
    _same_code(head + '"the first part "')
    _same_code(head + "more_arguments,")  # a list ending with its comma keeps it
    assert wrap(head + "more_arguments,")[-1].endswith("more_arguments,")

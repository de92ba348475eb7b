"""Checks the shape docs/design.md promises of src/turbo_queue, so that it cannot rot unnoticed:

- every source file is at most 1,000 lines and opens with a line that says what it owns (a comment
  or a docstring);
- the state prefixes (loading_, ready_, chosen_, invalid_, and the legacy names) are spelled in
  code only by the protocol unit, _protocol.pxi: anywhere else they may stand in comments and
  docstrings, never in a string literal the code uses;
- no Python module reaches into a private attribute of an object of another module (`x._name`
  where x is not self or cls, and _name is not defined in the same module).

    python scripts/check_layout.py        (exit status 1 and a list of what is wrong)
"""

import io
import os
import re
import sys
import tokenize

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "turbo_queue")
SOURCES = (".py", ".pyx", ".pxi", ".pxd", ".h")
PROTOCOL = "_protocol.pxi"
PREFIX = re.compile(r"\b(loading_|ready_|chosen_|invalid_|load_|unload_|avail_|assigned_)|_temp_hold|\.owner_")
PRIVATE = re.compile(r"(?<![\w.])(?!self\b|cls\b|os\b|sys\b|turbo_queue\b)([a-z]\w*)\.(_[a-z]\w*)")


def code_strings(text):
    """String literals that are not docstrings (a string that is a statement of its own)."""
    out = []
    prev = tokenize.NEWLINE
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.STRING and prev not in (tokenize.NEWLINE, tokenize.INDENT,
                                                            tokenize.NL, tokenize.DEDENT):
                out.append((tok.start[0], tok.string))
            if tok.type not in (tokenize.COMMENT,):
                prev = tok.type
    except (tokenize.TokenError, IndentationError, SyntaxError) as e:
        out.append((0, f"<cannot tokenize: {e}>"))
    return out


def main():
    problems = []
    for name in sorted(os.listdir(SRC)):
        if not name.endswith(SOURCES) or name.endswith(".c"):
            continue
        path = os.path.join(SRC, name)
        text = open(path, encoding="utf-8").read()
        lines = text.splitlines()
        if len(lines) > 1000:
            problems.append(f"{name}: {len(lines)} lines, over 1,000")
        first = lines[0] if lines else ""
        if not first.startswith(("#", '"""', "/*")) or first.startswith("# cython:"):
            problems.append(f"{name}: the first line does not say what the file owns: {first!r}")
        if name == PROTOCOL or name.endswith((".h", ".pxd")):
            continue
        for lineno, s in code_strings(text):
            if PREFIX.search(s) or s.startswith("<cannot"):
                problems.append(f"{name}:{lineno}: a state prefix outside the protocol unit: {s}")
        if name.endswith(".py"):
            # Private names this module defines itself (its own classes' attributes) may be used.
            own = set(re.findall(r"(?:def |self\.)(_[a-z]\w*)", text))
            for lineno, line in enumerate(lines, 1):
                code = line.split("#", 1)[0]
                for m in PRIVATE.finditer(code):
                    if m.group(2) not in own:
                        problems.append(f"{name}:{lineno}: reaches into a private attribute: {m.group(0)}")
    for p in problems:
        print(p)
    if problems:
        sys.exit(1)
    print("layout: ok")


if __name__ == "__main__":
    main()

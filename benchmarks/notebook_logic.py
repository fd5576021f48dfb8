"""How much of each notebook's code is logic: the share of "logic lines" among its code lines.

Target: in every notebook at most 35 % of the code lines are logic lines (loops, arithmetic, table shaping). A
notebook cell should read like a paper's method section that calls package functions; the computing belongs in
``unlearn_utils``, where it is tested.

Definition (on Python's ``ast``):

* **Counted lines**: the non-blank, non-comment lines of code cells (a line counts when its stripped text is not
  empty and does not start with ``#``), except the cell tagged ``parameters`` (settings) and cells tagged
  ``exercise`` (the learner's code, logic by design); tags are ``cell["metadata"]["tags"]``. Lines starting with
  ``%`` or ``!`` (IPython magics and shell commands) are skipped.
* Each **top-level statement** is plain or logic, and all its counted lines (decorators included) count as what it
  is; a line shared by two statements (``a = 1; b = a + 1``) is logic if either is.
* **Logic**: ``for`` / ``while`` / ``if`` / ``try`` / ``with`` / ``match`` / ``def`` / ``class`` statements,
  augmented assignments (``x += 1``), and any statement that contains one of: a comprehension or generator
  expression, a ``lambda``, a conditional expression (``a if c else b``), an arithmetic or bitwise binary operator
  (``BinOp``), a comparison (``Compare``), a boolean operator (``BoolOp``), a unary ``-``, ``~`` or ``not`` on a
  non-constant (``-x``; ``-1`` is a constant), or a subscript whose index is not one constant string or number
  (``df[df.x == 1]``, ``d[m]``, ``x[1:]``, ``x[0, 1]``, ``t.loc[a, "b"]``, ``df[["a", "b"]]``; ``d["a"]``,
  ``x[0]``, ``x[-1]`` and ``t.loc["a"]`` are plain). Operators inside f-string replacement fields count
  (``f"{a / b:.0%}"`` computes); format specs do not. Variable annotations (``x: list[str] = ...``) are not
  looked at.
* **Plain**: everything else: imports, bare expressions (a name, a call, a method chain) and assignments or calls
  whose parts contain none of the above, e.g. ``S.record(x=table.round(4).to_dict(orient="index"))``.

Run: ``python benchmarks/notebook_logic.py [--max 0.35] [NOTEBOOK ...]`` (default: ``notebooks/*.ipynb``). Prints
code lines, logic lines and the share per notebook and the 5 cells with the most logic lines; exits with status 1
when a notebook's share is above ``--max``.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

import pandas as pd

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SKIPPED_TAGS = ("parameters", "exercise")
LOGIC_STATEMENTS = (ast.For, ast.AsyncFor, ast.While, ast.If, ast.Try, ast.With, ast.AsyncWith, ast.FunctionDef,
                    ast.AsyncFunctionDef, ast.ClassDef, ast.AugAssign, ast.Match) + (
                       (ast.TryStar,) if hasattr(ast, "TryStar") else ())
LOGIC_EXPRESSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp, ast.Lambda, ast.IfExp, ast.BinOp,
                     ast.Compare, ast.BoolOp)


def _is_constant_number_or_string(node: ast.AST) -> bool:
    """``"a"``, ``0``, ``1.5``, ``-1``: one constant string or number (not a bool, None or Ellipsis)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        node = node.operand
    return (isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes, int, float, complex))
            and not isinstance(node.value, bool))


def _is_logic_node(node: ast.AST) -> bool:
    if isinstance(node, LOGIC_EXPRESSIONS):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Invert, ast.Not)):
        return not isinstance(node.operand, ast.Constant)
    if isinstance(node, ast.Subscript):
        return not _is_constant_number_or_string(node.slice)
    return False


def _children(node: ast.AST):
    """The child nodes that are looked at: an f-string's format spec and a variable annotation are skipped."""
    for name, value in ast.iter_fields(node):
        if (isinstance(node, ast.FormattedValue) and name == "format_spec") or (
                isinstance(node, ast.AnnAssign) and name == "annotation"):
            continue
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, ast.AST):
                yield child


def is_logic(statement: ast.stmt) -> bool:
    """Whether one top-level statement is a logic statement (see the module docstring)."""
    if isinstance(statement, LOGIC_STATEMENTS):
        return True
    todo = [statement]
    while todo:
        node = todo.pop()
        if _is_logic_node(node):
            return True
        todo.extend(_children(node))
    return False


def _counted(line: str) -> bool:
    text = line.strip()
    return bool(text) and not text.startswith("#")


def logic_lines(source: str) -> tuple[int, int]:
    """(counted lines, logic lines) of one code cell's source (see the module docstring for the definition)."""
    lines = source.split("\n")
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in lines]  # magics: not Python, not counted
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError as e:
        raise ValueError(f"The cell does not parse as Python ({e.msg}, line {e.lineno}): {source[:80]!r}") from None
    kind: dict[int, bool] = {}  # line number (1-based) -> logic?
    for statement in tree.body:
        first = min([statement.lineno] + [d.lineno for d in getattr(statement, "decorator_list", [])])
        logic = is_logic(statement)
        for n in range(first, statement.end_lineno + 1):
            kind[n] = kind.get(n, False) or logic
    counted = [n for n in kind if _counted(lines[n - 1])]
    return len(counted), sum(kind[n] for n in counted)


def cell_table(paths) -> pd.DataFrame:
    """One row per counted code cell: notebook, cell (its index in the notebook), id, code_lines, logic_lines,
    first_line (the cell's first counted line, to find it)."""
    rows = []
    for path in map(Path, paths):
        nb = json.loads(path.read_text(encoding="utf-8"))
        for i, cell in enumerate(nb["cells"]):
            tags = cell.get("metadata", {}).get("tags", [])
            if cell["cell_type"] != "code" or any(t in SKIPPED_TAGS for t in tags):
                continue
            source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            total, logic = logic_lines(source)
            first = next((line.strip() for line in source.split("\n")
                          if _counted(line) and not line.lstrip().startswith(("%", "!"))), "")
            rows.append({"notebook": path.stem, "cell": i, "id": cell.get("id", ""), "code_lines": total,
                         "logic_lines": logic, "first_line": first})
    return pd.DataFrame(rows, columns=["notebook", "cell", "id", "code_lines", "logic_lines", "first_line"])


def notebook_table(paths) -> pd.DataFrame:
    """One row per notebook (index: the notebook's file stem): code_lines, logic_lines and share = logic / code
    (0 for a notebook without counted lines)."""
    paths = [Path(p) for p in paths]
    cells = cell_table(paths)
    table = (cells.groupby("notebook", sort=False)[["code_lines", "logic_lines"]].sum()
             .reindex([p.stem for p in paths], fill_value=0))
    table["share"] = (table.logic_lines / table.code_lines.where(table.code_lines > 0)).fillna(0.0)
    table.index.name = "notebook"
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", help="notebook files (default: notebooks/*.ipynb)")
    ap.add_argument("--max", type=float, default=0.35, help="highest share of logic lines allowed per notebook")
    ap.add_argument("--top", type=int, default=5, help="how many cells with the most logic lines to list")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb"))
    table = notebook_table(paths)
    shown = table.assign(share=table.share.map(lambda s: f"{s:.0%}"))
    print(shown.to_string())
    top = cell_table(paths).sort_values(["logic_lines", "code_lines"], ascending=False, kind="stable").head(args.top)
    print(f"\nThe {len(top)} cells with the most logic lines:")
    print(top.assign(first_line=top.first_line.str.slice(0, 60)).to_string(index=False))
    over = table[table.share > args.max]
    if len(over):
        print(f"\nAbove the target ({args.max:.0%} logic lines): {', '.join(over.index)}")
        return 1
    print(f"\nEvery notebook is within the target ({args.max:.0%} logic lines).")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The notebook logic-line counter (benchmarks/notebook_logic.py): each rule on small sources, and the cell tags."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "notebook_logic.py"


@pytest.fixture(scope="module")
def nl():
    spec = importlib.util.spec_from_file_location("notebook_logic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PLAIN = [
    "import numpy as np",
    "from unlearn_utils import concepts, evaluate as ev",
    "x",
    "table.round(3)",
    'S.record(x=table.round(4).to_dict(orient="index"))',
    'print(f"{n} rows")',
    'print(f"{share:.0%} of topics")',  # a format spec is not an operator
    'row = d["a"]',
    "first = x[0]",
    "last = x[-1]",
    'r = t.loc["a"]',
    "y = -1",
    "f(a, b=[1, 2], c={'k': v}, *args, **kwargs)",
    "model.eval()",
]

LOGIC = [
    "for i in range(3):\n    print(i)",
    "while x:\n    x = step(x)",
    "if SMOKE:\n    n = 1",
    "try:\n    f()\nexcept ValueError:\n    pass",
    "with torch.no_grad():\n    f()",
    "def f(x):\n    return x",
    "class A:\n    pass",
    "n += 1",
    "ys = [f(x) for x in xs]",
    "s = {x for x in xs}",
    "d = {k: v for k, v in items}",
    "total = sum(x for x in xs)",
    "m = t.map(lambda v: v)",
    "y = a if c else b",
    "z = a + b",
    "z = a @ b",
    "m = a & b",
    "y = -x",
    "ok = a >= 0.3",
    "ok = source is world",
    "ok = a and b",
    "rows = df[df.x == 1]",
    "v = d[m]",
    "tail = x[1:]",
    "cell = x[0, 1]",
    't = table.loc[a, "b"]',
    'cols = df[["a", "b"]]',
    't = table.iloc[i]',
    'print(f"{a / b:.0%}")',
    "share = float((located.overlap >= 0.3).mean())",
]


@pytest.mark.parametrize("source", PLAIN)
def test_plain_statements(nl, source):
    assert nl.logic_lines(source) == (1, 0)


@pytest.mark.parametrize("source", LOGIC)
def test_logic_statements(nl, source):
    n = len(source.split("\n"))
    assert nl.logic_lines(source) == (n, n)


def test_every_line_of_a_statement_counts_as_the_statement(nl):
    source = ("out = f(a,\n"
              "        b)\n"
              "res = g(a,\n"
              "        [x for x in b])\n")
    assert nl.logic_lines(source) == (4, 2)  # the second call is logic on both of its lines


def test_blank_comment_and_magic_lines_are_not_counted(nl):
    source = ("# a comment\n"
              "\n"
              "%time x = f()\n"
              "!ls\n"
              "for i in xs:\n"
              "    # inside the loop\n"
              "\n"
              "    g(i)\n"
              "y = f(x)  # trailing comment\n")
    assert nl.logic_lines(source) == (3, 2)
    assert nl.logic_lines("") == (0, 0)
    assert nl.logic_lines("# only a comment\n%matplotlib inline") == (0, 0)


def test_decorators_count_with_their_def(nl):
    assert nl.logic_lines("@torch.no_grad()\ndef f():\n    return 1") == (3, 3)


def test_a_line_with_two_statements_is_logic_if_either_is(nl):
    assert nl.logic_lines("a = f(); b = a + 1") == (1, 1)
    assert nl.logic_lines("a = f(); b = g(a)") == (1, 0)


def test_operators_in_nested_calls_and_fstring_fields_count(nl):
    assert nl.logic_lines("print(f(g(h(x + 1))))") == (1, 1)
    assert nl.logic_lines('print(f"{len(xs)} items, e.g. {xs[0]}")') == (1, 0)
    assert nl.logic_lines('print(f"{xs[:3]}")') == (1, 1)
    assert nl.logic_lines('print(f"{x:{width}}")') == (1, 0)  # a nested field of the format spec
    assert nl.logic_lines('print(f"{x:{w + 1}}")') == (1, 0)  # format specs are not looked at


def test_a_cell_that_does_not_parse_is_a_clear_error(nl):
    with pytest.raises(ValueError, match="does not parse"):
        nl.logic_lines("for x in")


def _notebook(path, cells):
    nb = {"cells": [{"cell_type": kind, "metadata": {"tags": tags} if tags else {}, "source": source,
                     **({"outputs": [], "execution_count": None} if kind == "code" else {})}
                    for kind, tags, source in cells],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(nb))
    return path


def test_parameters_exercise_and_markdown_cells_are_skipped(nl, tmp_path):
    a = _notebook(tmp_path / "a.ipynb", [
        ("code", ["parameters"], "K = 20\nSTEPS = 2 * 10\n"),
        ("markdown", [], "for x in y: z = 1 + 2\n"),
        ("code", ["exercise"], ["def f(x):\n", "    return x + 1\n"]),
        ("code", [], ["x = f(K)\n", "y = x + 1\n"]),
        ("code", ["hint"], "for i in xs:\n    g(i)\n"),
    ])
    b = _notebook(tmp_path / "b.ipynb", [("code", [], "import numpy as np\n")])
    empty = _notebook(tmp_path / "empty.ipynb", [("markdown", [], "# only prose\n")])
    table = nl.notebook_table([a, b, empty])
    assert list(table.index) == ["a", "b", "empty"]
    assert table.loc["a"].tolist() == [4, 3, 0.75]  # the parameters and exercise cells are left out
    assert table.loc["b"].tolist() == [1, 0, 0.0]
    assert table.loc["empty"].tolist() == [0, 0, 0.0]
    cells = nl.cell_table([a])
    assert cells.cell.tolist() == [3, 4] and cells.logic_lines.tolist() == [1, 2]
    assert cells.first_line.tolist() == ["x = f(K)", "for i in xs:"]


def test_the_cli_fails_above_the_limit(nl, tmp_path, capsys):
    path = _notebook(tmp_path / "n.ipynb", [("code", [], "x = f()\ny = x + 1\n")])
    assert nl.main([str(path), "--max", "0.5"]) == 0
    assert nl.main([str(path), "--max", "0.4"]) == 1
    out = capsys.readouterr().out
    assert "Above the target" in out and "50%" in out


def test_every_notebook_reads_like_a_method_section(nl):
    """At most 35 % of each notebook's counted lines are logic: the rest calls the package."""
    paths = sorted((SCRIPT.parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    table = nl.notebook_table(paths)
    assert len(table) == len(paths) >= 7
    over = {name: f"{row.logic_lines}/{row.code_lines}" for name, row in table.iterrows()
            if row.logic_lines > 0.35 * row.code_lines}
    assert not over, f"notebooks above 35 % logic lines: {over} (move the loops into unlearn_utils)"

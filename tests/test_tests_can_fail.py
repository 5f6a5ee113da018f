"""Every test can fail: each test function asserts, expects an exception or a warning, or calls a
helper defined in tests/ that does.

A test function (a name starting with ``test``, at module level or in a ``Test*`` class) passes
this check when its body holds one of:

* an ``assert`` statement that can fail (not ``assert True``, ``assert "text"`` or
  ``assert x or True``);
* a call to ``pytest.raises``, ``pytest.warns``, ``pytest.fail`` or ``pytest.deprecated_call``
  (as a context manager or not);
* a call to a function named ``assert_*`` (``torch.testing.assert_close`` ...);
* a call to a helper defined in a tests/ module (the same module first, then any other, e.g.
  ``conftest``; ``self.helper()`` in a test class) that itself passes this check.

A second check: every ``pytest.raises`` and ``pytest.warns`` names the message it expects
(``match=``), except the call form ``pytest.raises(Error, function, *args)``.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
EXPECTING = {"raises", "warns", "fail", "deprecated_call"}


def _always_true(test: ast.expr) -> bool:
    """Whether an assert's condition is a truthy constant, or an ``or`` with one."""
    if isinstance(test, ast.Constant):
        return bool(test.value)
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or):
        return any(_always_true(v) for v in test.values)
    return False


def _called_name(call: ast.Call) -> tuple[str | None, str | None]:
    """``(owner, name)`` of a call: ``("pytest", "raises")``, ``(None, "helper")``, ``("self", "f")``."""
    f = call.func
    if isinstance(f, ast.Name):
        return None, f.id
    if isinstance(f, ast.Attribute):
        owner = f.value.id if isinstance(f.value, ast.Name) else None
        return owner, f.attr
    return None, None


class Index:
    """The functions of the tests/ modules, and which of them can fail."""

    def __init__(self, sources: dict[str, str]):
        self.trees = {name: ast.parse(src, filename=name) for name, src in sources.items()}
        self.functions: dict[str, dict[str, ast.AST]] = {}  # module -> name -> def
        self.methods: dict[int, dict[str, ast.AST]] = {}  # id(class) -> name -> def
        self.owner: dict[int, ast.ClassDef] = {}  # id(method) -> class
        self.home: dict[int, str] = {}  # id(function or method) -> module
        for module, tree in self.trees.items():
            defs = self.functions.setdefault(module, {})
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    defs[node.name] = node
                    self.home[id(node)] = module
                elif isinstance(node, ast.ClassDef):
                    methods = {n.name: n for n in node.body
                               if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
                    self.methods[id(node)] = methods
                    for m in methods.values():
                        self.owner[id(m)], self.home[id(m)] = node, module
        self._memo: dict[int, bool] = {}

    def _resolve(self, module: str, fn: ast.AST, call: ast.Call) -> ast.AST | None:
        owner, name = _called_name(call)
        if name is None:
            return None
        if owner == "self" and id(fn) in self.owner:
            return self.methods[id(self.owner[id(fn)])].get(name)
        if owner is not None:
            return None
        if name in self.functions[module]:
            return self.functions[module][name]
        for other, defs in self.functions.items():
            if other != module and name in defs:
                return defs[name]
        return None

    def can_fail(self, module: str, fn: ast.AST, seen: frozenset = frozenset()) -> bool:
        """Whether a function asserts, expects an exception or warning, or calls a helper that does."""
        if id(fn) in self._memo:
            return self._memo[id(fn)]
        result = False
        for node in ast.walk(fn):
            if isinstance(node, ast.Assert):
                result = not _always_true(node.test)
            elif isinstance(node, ast.Call):
                owner, name = _called_name(node)
                if (owner == "pytest" and name in EXPECTING) or (name or "").startswith("assert_"):
                    result = True
                else:
                    helper = self._resolve(module, fn, node)
                    if helper is not None and id(helper) not in seen | {id(fn)}:
                        result = self.can_fail(self.home[id(helper)], helper, seen | {id(fn)})
            if result:
                break
        if not seen:  # a result found with a call cycle cut short is not final
            self._memo[id(fn)] = result
        return result

    def collect(self):
        """``(module, name, def)`` of every test function and test method."""
        for module, tree in self.trees.items():
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                    yield module, node.name, node
                elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                    for name, m in self.methods[id(node)].items():
                        if name.startswith("test"):
                            yield module, f"{node.name}.{name}", m


def find_tests_that_cannot_fail(sources: dict[str, str]) -> list[str]:
    """``module::function`` of each test function that cannot fail.

    Args:
        sources: file name to Python source, for every module of the tests folder.

    Returns:
        The offending tests, in file order.
    """
    index = Index(sources)
    return [f"{module}::{name}" for module, name, fn in index.collect() if not index.can_fail(module, fn)]


def find_expectations_without_match(sources: dict[str, str]) -> list[str]:
    """``module:line`` of each ``pytest.raises``/``pytest.warns`` context without ``match=``.

    Args:
        sources: file name to Python source.

    Returns:
        The offending calls, in file order.
    """
    out = []
    for module, src in sources.items():
        for node in ast.walk(ast.parse(src, filename=module)):
            if isinstance(node, ast.Call) and _called_name(node) in {("pytest", "raises"),
                                                                      ("pytest", "warns")}:
                called_form = len(node.args) > 1  # pytest.raises(Error, function, *args)
                if not called_form and not any(k.arg == "match" for k in node.keywords):
                    out.append(f"{module}:{node.lineno}")
    return sorted(out, key=lambda s: (s.split(":")[0], int(s.split(":")[1])))


def _tests_folder() -> dict[str, str]:
    sources = {p.relative_to(TESTS).as_posix(): p.read_text(encoding="utf-8")
               for p in sorted(TESTS.rglob("*.py")) if "__pycache__" not in p.parts}
    assert "conftest.py" in sources and len(sources) > 10
    return sources


def test_every_test_in_the_tests_folder_can_fail():
    bad = find_tests_that_cannot_fail(_tests_folder())
    assert bad == [], "tests that assert nothing:\n" + "\n".join(bad)


def test_every_expected_exception_names_its_message():
    bad = find_expectations_without_match(_tests_folder())
    assert bad == [], "pytest.raises/warns without match=:\n" + "\n".join(bad)


HELPERS = '''
import pytest

def check(x):
    assert x

def quiet(x):
    return x + 1
'''

FLAGGED = '''
from helpers import quiet

def test_calls_a_helper_that_asserts_nothing():
    quiet(1)

def test_builds_a_list():
    completions = [1, 2]
    completions.append(3)

class TestThings:
    def helper(self):
        return 1

    def test_method_calls_a_quiet_method(self):
        self.helper()

def test_recursion_without_assert():
    test_recursion_without_assert()

def test_asserts_only_what_cannot_fail():
    assert True
    assert "a constant is never false"
    assert all(p in "abc" for p in "xyz") or True
'''

PASSES = '''
import pytest
import torch
from helpers import check

def outer():
    check(2)

def test_assert():
    assert 1 + 1 == 2

def test_raises():
    with pytest.raises(ValueError, match="invalid literal"):
        int("x")

def test_raises_called():
    pytest.raises(ValueError, int, "x")

def test_warns():
    with pytest.warns(UserWarning, match="w"):
        pass

def test_fail():
    pytest.fail("unreachable")

def test_assert_close():
    torch.testing.assert_close(torch.ones(1), torch.ones(1))

def test_helper_in_another_module():
    check(1)

def test_helper_of_a_helper():
    outer()

class TestThings:
    def check(self, x=1):
        assert x == 1

    def test_method(self):
        self.check()

def not_a_test():
    pass
'''


def test_the_walker_flags_tests_that_assert_nothing():
    bad = find_tests_that_cannot_fail({"helpers.py": HELPERS, "test_flagged.py": FLAGGED,
                                  "test_passes.py": PASSES})
    assert bad == [
        "test_flagged.py::test_calls_a_helper_that_asserts_nothing",
        "test_flagged.py::test_builds_a_list",
        "test_flagged.py::TestThings.test_method_calls_a_quiet_method",
        "test_flagged.py::test_recursion_without_assert",
        "test_flagged.py::test_asserts_only_what_cannot_fail",
    ]


def test_the_walker_flags_expectations_without_match():
    src = """
import pytest

def test_it():
    with pytest.raises(ValueError):
        int("x")
    with pytest.raises(ValueError, match="invalid"):
        int("x")
    pytest.raises(ValueError, int, "x")
    with pytest.warns(UserWarning):
        pass
"""
    assert find_expectations_without_match({"t.py": src}) == ["t.py:5", "t.py:10"]

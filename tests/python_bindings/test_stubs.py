"""The type stubs describe the extension as built: same names, same members, same parameters."""
import ast
import inspect
import os

import lipattn
import lipattn._lipattn as ext

STUB = os.path.join(os.path.dirname(lipattn.__file__), "_lipattn.pyi")


def stub_tree():
    with open(STUB) as f:
        return ast.parse(f.read())


def params(fn: ast.FunctionDef):
    a = fn.args
    names = [x.arg for x in a.posonlyargs + a.args if x.arg not in ("self", "cls")] + [x.arg for x in a.kwonlyargs]
    return names


def runtime_params(obj):
    sig = inspect.signature(obj)
    return [p for p in sig.parameters if p not in ("self", "cls")]


def test_py_typed_and_stub_installed():
    assert os.path.exists(os.path.join(os.path.dirname(lipattn.__file__), "py.typed"))
    assert os.path.exists(STUB)


def test_stub_names_match_the_extension():
    tree = stub_tree()
    stubbed = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    public = {n for n in dir(ext) if not n.startswith("_")}
    assert stubbed == public
    assert set(lipattn.__all__) - {"__version__"} == public


def test_stub_signatures_match_the_extension():
    for node in stub_tree().body:
        if isinstance(node, ast.FunctionDef):
            assert params(node) == runtime_params(getattr(ext, node.name)), node.name
        if isinstance(node, ast.ClassDef) and not node.name.endswith("Error"):
            cls = getattr(ext, node.name)
            seen = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name not in seen:
                    seen.add(item.name)
                    assert hasattr(cls, item.name), f"{node.name}.{item.name}"
                    member = inspect.getattr_static(cls, item.name)
                    if callable(member) and item.name not in ("__init__", "__len__", "__float__"):
                        fn = getattr(cls, item.name)
                        assert params(item) == runtime_params(fn), f"{node.name}.{item.name}"
                elif isinstance(item, ast.AnnAssign):
                    assert hasattr(cls, item.target.id), f"{node.name}.{item.target.id}"
            if "__init__" in seen:
                init = next(i for i in node.body if isinstance(i, ast.FunctionDef) and i.name == "__init__")
                assert params(init) == runtime_params(cls), node.name

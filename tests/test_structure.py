"""The package's import structure: no cycles, layers that only import downwards, SKATR outside the core.

Walks every module of ``halotrans/`` with ``ast`` (imports inside functions count; imports under
``if TYPE_CHECKING:`` do not, they never run) and checks:

* no import cycle between modules;
* the library modules of the low layers (``sims``, ``fields``, ``data``, ``models``, ``parallel``)
  never import ``train``, ``eval``, ``launch``, ``skatr``, the aggregate ``halotrans.config`` or the
  command-line layer; a package's ``cli.py`` is its command layer and may load the whole config;
* the core (those packages plus ``train``, ``eval``, ``launch``) never imports ``halotrans.skatr``:
  registries name SKATR's classes as strings, imported on first use.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "halotrans"
LOW = ("sims", "fields", "data", "models", "parallel")
CORE = LOW + ("train", "eval", "launch")
UPPER = ("halotrans.train", "halotrans.eval", "halotrans.launch", "halotrans.skatr", "halotrans.config",
         "halotrans.cli", "halotrans.demo", "halotrans.benchmark")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """module -> the halotrans modules it imports (``from pkg import mod`` resolves to the module)."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        deps: set[str] = set()
        for node in ast.walk(tree):
            if _type_checking_only(node, parents):
                continue
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("halotrans"):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("halotrans")}
        graph[name] = {d for d in deps if d != name and d != "halotrans"}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first = last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d in graph and not state.get(d):
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if not state.get(m):
            found = visit(m)
            if found:
                return found
    return None


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None, f"import cycle: {' -> '.join(find_cycle(import_graph()))}"


def test_low_layers_import_only_downwards():
    bad = [f"{m} imports {d}" for m, deps in import_graph().items()
           if _under(m, tuple(f"halotrans.{p}" for p in LOW)) and not m.endswith(".cli")
           for d in sorted(deps) if _under(d, UPPER)]
    assert not bad, "\n".join(bad)


def test_core_never_imports_skatr():
    bad = [f"{m} imports {d}" for m, deps in import_graph().items()
           if _under(m, tuple(f"halotrans.{p}" for p in CORE)) for d in sorted(deps) if _under(d, ("halotrans.skatr",))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("graph, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": set(), "c": {"a", "b"}}, None),
])
def test_cycle_finder(graph, cycle):
    """The checker itself finds a planted cycle (and none where there is none)."""
    assert find_cycle(graph) == cycle


def test_registries_resolve():
    """Every registered task and network imports and has the declared hooks."""
    from halotrans.models.network import Network
    from halotrans.models.registry import MODELS
    from halotrans.train.registry import TASKS
    from halotrans.train.task import Task

    for name in MODELS:
        assert issubclass(MODELS.get(name), Network), name
    for name in TASKS:
        cls = TASKS.get(name)
        assert issubclass(cls, Task) and cls.name == name, name


def _readme_example(marker: str) -> str:
    """The Python block of the README whose first line contains ``marker``."""
    text = (ROOT.parent / "README.md").read_text()
    start = text.index("```python\n" + marker) + len("```python\n")
    return text[start:text.index("```", start)]


def test_readme_examples_add_a_task_and_a_network(tmp_path):
    """The README's developer examples, as written: one module + one registry line each, then two
    real training steps (DeepSpeed loop, world of one) of the new task with vipr, and of the new
    network with the segment task, checkpoints and model.pt included."""
    from tests.helpers import run, write_synthetic_boxes

    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "denoise.py").write_text(_readme_example("# mypkg/denoise.py"))
    (pkg / "unet_lite.py").write_text(_readme_example("# mypkg/unet_lite.py"))
    boxes = write_synthetic_boxes(tmp_path / "boxes", range(4), n=16)
    script = f"""
import sys
sys.path.insert(0, {str(tmp_path)!r})
from halotrans.models.registry import MODELS
from halotrans.train.registry import TASKS, make_task
TASKS.register("denoise", "mypkg.denoise:DenoiseTask")
MODELS.register("unet_lite", "mypkg.unet_lite:UNetLite")
from halotrans.config import load_config
from halotrans.train.loop import train
common = ["data.root={boxes}", "data.crop=16", "train.steps=2", "train.eval_every=1", "train.checkpoint_every=1"]
for name, sets in {{"denoise": ["train.task=denoise", "model.patch_size=8", "model.hidden_size=16",
                                "model.depth=3", "model.num_heads=2", "model.mlp_dim=16", "model.skip_layers=[1,2,3]"],
                    "unet_lite": ["model.name=unet_lite"]}}.items():
    cfg = load_config("segment/tiny_vipr.yaml", [*common, *sets, f"train.out_dir={tmp_path}/" + name])
    result = train(cfg, make_task(cfg))
    print(name, result["step"], sorted(result["val"]))
"""
    out = run([sys.executable, "-c", script], timeout=600).stdout
    assert "denoise 2 ['val_loss']" in out and "unet_lite 2 ['val_acc', 'val_loss']" in out, out
    for name in ("denoise", "unet_lite"):
        assert (tmp_path / name / "model.pt").is_file()

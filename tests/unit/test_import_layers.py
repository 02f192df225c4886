"""The package's layer rule, read from the source: imports run downward only and never in a circle.

Every import of `llama_course/` counts, also one inside a function (a lazy import is how a hidden loop hides), a
string naming a package module (what `importlib.import_module` and `python -m` receive) and a `-m llama_course.X`
launch inside a command line; docstrings and comments do not.
"""

import ast
import itertools
import re
from collections import defaultdict
from pathlib import Path

import llama_course

# Each top-level module or subpackage of `llama_course`, by layer (1 lowest): a module imports from its own layer or
# lower ones only.
LAYERS = {
    "layers": (1, "the model's pieces: norm, MLP, RoPE, attention, KV cache, fused output and loss"),
    "config": (1, "ModelConfig, presets and parameter counts: plain numbers over the layers' rules"),
    "tokenizer": (1, "SentencePiece BPE with Llama's options: text in, tokens out"),
    "chat": (1, "the Llama 2 chat format and its answer mask, over the tokenizer"),
    "data": (1, "packing token streams into training blocks, over the tokenizer"),
    "arguments": (1, "argparse types that refuse a bad flag, for every command wherever it lives"),
    "config_files": (1, "one way to configure: a config dataclass from a TOML file, flags and --set"),
    "toyworld": (1, "the stand-in data and its ground-truth checkers, built on the tokenizer and chat format only"),
    "paper": (1, "Llama 2's published constants, for the algorithms that define them and the toy world alike"),
    "model": (2, "the Llama itself, built from the layers"),
    "model_files": (2, "the on-disk model folder (config.json + safetensors + card) of a model"),
    "__init__": (3, "`import llama_course as lc`: the public model, generation and tokenizer API"),
    "generation": (3, "decoding with a model"),
    "chat_session": (3, "a multi-turn dialogue with one model, its answers streamed"),
    "training": (3, "one trainer loop and its parallelism, checkpoints and metrics"),
    "interop": (3, "Hugging Face and Meta checkpoints, to and from the model"),
    "pretrained": (3, "the shipped base checkpoint: trained by `training`, loaded by everything above"),
    "measurements": (3, "chapters 5-9's measurements of the model and the trainer: memory, time, samples"),
    "alignment": (4, "Llama 2's algorithms: SFT, reward models, rejection sampling, PPO, GAtt"),
    "evaluation": (4, "Llama 2's evaluation: side-by-side judgments, rater agreement, intervals, safety"),
    "experiments": (5, "the measured runs behind the chapters, over the algorithms and the evaluation"),
    "commands": (6, "one module per `llama-course` subcommand: parsing and printing"),
    "cli": (6, "`llama-course`: dispatches to the subcommands"),
    "pipeline": (6, "the resumable runner of `llama-course reproduce`"),
    "notebooks": (6, "running the chapters and writing their notebooks (`llama-course sync-notebooks`)"),
    "grading": (6, "the exercise grader: checks exercises against every layer's reference code"),
}

PACKAGE = Path(llama_course.__file__).parent
CONTRIBUTING = Path(__file__).resolve().parents[2] / "CONTRIBUTING.md"
LAUNCH = re.compile(r"-m\s+(llama_course(?:\.\w+)+)")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def owning_module(name: str) -> str | None:
    """The package module that `name` (a module, or a name defined in one) resolves to; None outside the package."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def docstrings(tree: ast.Module) -> set[int]:
    nodes = [tree, *(node for node in ast.walk(tree)
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))]
    return {id(node.body[0].value) for node in nodes
            if node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}


def imports(name: str, source: str | None = None) -> list[tuple[str, int]]:
    """(imported package module, line) for every import, module-naming string and `-m` launch in module `name`
    (whose text is `source`, by default its file's)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = docstrings(tree)
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" for alias in node.names]  # a submodule, or a name in `base`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            targets = [node.value] if node.value in MODULES else LAUNCH.findall(node.value)
        for target in targets:
            module = owning_module(target)
            if module is not None and module != name:
                found.append((module, node.lineno))
    return sorted(found, key=lambda found: found[1])


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS["__init__" if len(parts) == 1 else parts[1]][0]


GRAPH = {name: imports(name) for name in MODULES}


def where(source: str, target: str) -> str:
    line = next(line for module, line in GRAPH[source] if module == target)
    return f"{MODULES[source].relative_to(PACKAGE.parent)}:{line} ({source} -> {target})"


def layer_table() -> str:
    """LAYERS as the Markdown table that CONTRIBUTING.md shows."""
    rows = ["| layer | modules and subpackages of `llama_course/` | may import from |", "|---|---|---|"]
    for layer in sorted({layer for layer, _ in LAYERS.values()}):
        names = ", ".join(f"`{name}`" for name, (number, _) in LAYERS.items() if number == layer)
        rows.append(f"| {layer} | {names} | {'layer 1' if layer == 1 else f'layers 1 to {layer}'} |")
    return "\n".join(rows)


def test_contributing_shows_the_layer_table():
    assert layer_table() in CONTRIBUTING.read_text(), (
        f"CONTRIBUTING.md's layer table differs from LAYERS; replace it with:\n{layer_table()}")


def test_every_module_has_a_layer():
    tops = {name.split(".")[1] if "." in name else "__init__" for name in MODULES}
    assert tops - LAYERS.keys() == set(), "give each new top-level module or subpackage a layer in LAYERS"
    assert LAYERS.keys() - tops == set(), "LAYERS names modules that no longer exist"


def upward_imports() -> set[tuple[str, str]]:
    return {(source, target) for source, targets in GRAPH.items() for target, _ in targets
            if layer_of(target) > layer_of(source)}


def cycles() -> list[list[str]]:
    """Every circle of imports, as the modules of each strongly connected component (Tarjan's algorithm)."""
    edges = defaultdict(set)
    for source, targets in GRAPH.items():
        edges[source].update(target for target, _ in targets)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(edges[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                components.append(sorted(component))

    for module in MODULES:
        if module not in index:
            visit(module)
    return components


def test_imports_run_downward_only():
    found = upward_imports()
    assert not found, "imports from a lower layer to a higher one (see LAYERS):\n" + "\n".join(
        f"{where(source, target)}: layer {layer_of(source)} -> {layer_of(target)}" for source, target in sorted(found))


# Algorithms take their data, tokenizer, annotators and judges as arguments; the toy world is one provider of them,
# wired in by `experiments/` (toyworld_data, toyworld_judges) and the commands.
TOY_WORLD_FREE = ("alignment", "evaluation", "training")


def toy_world_imports() -> dict[str, list[str]]:
    """Where each module of `TOY_WORLD_FREE` imports `llama_course.toyworld` (lazy imports and strings included)."""
    found: dict[str, list[str]] = defaultdict(list)
    for source, targets in sorted(GRAPH.items()):
        if source.split(".")[1:2] in ([name] for name in TOY_WORLD_FREE):
            for target, line in targets:
                place = f"{MODULES[source].relative_to(PACKAGE.parent)}:{line} ({source} -> {target})"
                if target.split(".")[1] == "toyworld" and place not in found[source]:
                    found[source].append(place)
    return {source: places for source, places in found.items() if places}


def test_algorithms_do_not_import_the_toy_world():
    found = [place for places in toy_world_imports().values() for place in places]
    assert not found, ("algorithms import the toy world; take its data, tokenizer, annotator or judge as an argument "
                       "and pass the toy world's from experiments/ or the command:\n" + "\n".join(found))


def test_the_toy_world_rule_sees_a_lazy_import():
    source = "def f():\n    from llama_course.toyworld import adherence\n"
    assert imports("llama_course.alignment.gatt", source) == [("llama_course.toyworld", 2)]


def loop_through(component: list[str]) -> list[str]:
    """A shortest circle of imports from the first module of `component` back to it (breadth-first)."""
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        module = queue.pop(0)
        for target, _ in GRAPH[module]:
            if target == start:
                return paths[module] + [start]
            if target in component and target not in paths:
                paths[target] = paths[module] + [target]
                queue.append(target)
    raise AssertionError(f"no circle through {start}")


def test_no_import_cycle():
    loops = [loop_through(component) for component in cycles()]
    assert not loops, "import cycles, one circle each:\n" + "\n".join(
        "; ".join(where(source, target) for source, target in itertools.pairwise(loop)) for loop in loops)


def test_the_checker_sees_lazy_imports_strings_and_launches():
    source = ('"""Run `python -m llama_course.cli` (a docstring: not an import)."""\n'
              "from . import layers\n"
              "def f():\n"
              "    from llama_course.model import Llama\n"
              "    importlib.import_module('llama_course.generation')\n"
              "    run(['torchrun', '-m', 'llama_course.training.pretrain'])\n"
              "    os.system('python -m llama_course.notebooks x.md')\n")
    assert imports("llama_course.data", source) == [
        ("llama_course.layers", 2), ("llama_course.model", 4), ("llama_course.generation", 5),
        ("llama_course.training.pretrain", 6), ("llama_course.notebooks", 7)]
    assert {"llama_course.commands.sft", "llama_course.commands.presets"} <= {
        target for target, _ in GRAPH["llama_course.cli"]}

"""Dependencies point one way (experiments -> training -> evaluation -> config -> models, losses,
schedule -> matchers -> data -> keras_compat) and no module imports itself back through others.
Every import counts, also those inside functions."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "dibigan_tf")

#: a module may import modules of its own rank or lower
RANKS = {"keras_compat": 0, "data": 1, "matchers": 2, "models": 3, "losses": 3, "schedule": 3,
         "config": 4, "evaluation": 5, "training": 6}


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".")
                yield module.removesuffix(".__init__"), path


def _imports(path):
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dibigan_tf"):
            if node.module == "dibigan_tf":
                yield from (f"dibigan_tf.{a.name}" for a in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("dibigan_tf"))


def _room(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _graph():
    modules = dict(_modules())
    graph = {}
    for module, path in modules.items():
        targets = set()
        for target in _imports(path):
            # `from dibigan_tf.evaluation import verification` names a submodule
            targets.add(target if target in modules else target.rsplit(".", 1)[0]
                        if target.rsplit(".", 1)[0] in modules else target)
        graph[module] = targets - {module}
    return graph


def test_every_room_has_a_rank():
    rooms = {_room(m) for m in _graph()} - {None}
    assert rooms <= set(RANKS), f"rooms without a rank: {sorted(rooms - set(RANKS))}"


def _upward(graph):
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if _room(a) and _room(b) and _room(a) != _room(b)
                  and RANKS[_room(b)] > RANKS[_room(a)])


def _cycles(graph):
    state, cycles = {}, []

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_upward_import():
    upward = _upward(_graph())
    assert not upward, "imports that point upward:\n" + "\n".join(upward)


def test_no_import_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checks_catch_planted_faults(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from dibigan_tf.training import gan\n")
    assert list(_imports(str(source))) == ["dibigan_tf.training"]
    assert _upward({"dibigan_tf.data.x": {"dibigan_tf.training.gan"},
                    "dibigan_tf.training.gan": {"dibigan_tf.data.x"}}) == [
        "dibigan_tf.data.x -> dibigan_tf.training.gan"]
    assert _cycles({"dibigan_tf.data.a": {"dibigan_tf.data.b"},
                    "dibigan_tf.data.b": {"dibigan_tf.data.a"}}) == [
        "dibigan_tf.data.a -> dibigan_tf.data.b -> dibigan_tf.data.a"]

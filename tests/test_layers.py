"""The library's layers: lower layers never import upper ones, and the library never imports the CLI."""
import ast
from pathlib import Path

import cartoongan

PKG = Path(cartoongan.__file__).parent
# rank of each top-level module or subpackage; a module may import only ranks <= its own
RANK = {"errors": 0, "report": 0, "device": 0, "outputs": 0, "hostmem": 0, "npyfile": 0, "filekind": 0, "ops": 1, "models": 2, "config": 3, "weights": 3, "data": 3,
        "metrics": 4, "train": 5, "pipelines": 6, "bench": 7, "recipes": 0, "__init__": 8}


def _unit(parts: list[str]) -> str:
    return parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported cartoongan unit, line) for every import in a module, relative ones resolved."""
    rel = path.relative_to(PKG).with_suffix("").parts
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel[:-node.level]) if node.level <= len(rel) else []
                target = base + (node.module.split(".") if node.module else [a.name for a in node.names])
            elif node.module and node.module.split(".")[0] in ("cartoongan", "cartoongan_cli"):
                if node.module.startswith("cartoongan_cli"):
                    found.append(("cartoongan_cli", node.lineno))
                    continue
                target = node.module.split(".")[1:] or [a.name for a in node.names]
            else:
                continue
            if target:
                found.append((_unit(target), node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "cartoongan_cli":
                    found.append(("cartoongan_cli", node.lineno))
                elif a.name.startswith("cartoongan."):
                    found.append((a.name.split(".")[1], node.lineno))
    return found


def test_every_unit_has_a_rank():
    units = {p.name.removesuffix(".py") for p in PKG.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert units - {"pretrained"} <= set(RANK), units - set(RANK)


def test_lower_layers_never_import_upper_ones():
    bad = []
    for path in PKG.rglob("*.py"):
        unit = _unit(list(path.relative_to(PKG).parts))
        for target, line in _imports(path):
            if target == "cartoongan_cli":
                bad.append(f"{path.relative_to(PKG)}:{line} imports the CLI")
            elif target in RANK and RANK[target] > RANK[unit]:
                bad.append(f"{path.relative_to(PKG)}:{line} ({unit}) imports {target}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path):
    """The import walk resolves relative imports, so a real upward import would be caught."""
    fake = PKG / "ops" / "_layer_probe.py"
    fake.write_text("from ..train.trainer import Trainer\nfrom cartoongan_cli.app import app\n")
    try:
        assert ("train", 1) in _imports(fake) and ("cartoongan_cli", 2) in _imports(fake)
    finally:
        fake.unlink()

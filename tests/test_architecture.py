"""The layout shows the architecture: the core knows nothing of any task (docs/design.md)."""

import ast
from pathlib import Path

from tests.conftest import ROOT

CORE = ROOT / "gflownet" / "core"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_core_imports_nothing_from_tasks_or_task_rewards():
    offenders = {}
    for path in sorted(CORE.rglob("*.py")):
        bad = {m for m in imported_modules(path) if m.startswith(("gflownet.tasks", "gflownet.rewards"))}
        bad |= {m for m in imported_modules(path) if m == "gflownet" or m.startswith("gflownet.") and not m.startswith("gflownet.core")}
        if bad:
            offenders[path.name] = sorted(bad)
    assert not offenders, offenders
    assert len(list(CORE.glob("*.py"))) >= 10  # the check reads the real core


def test_the_check_would_catch_a_task_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nfrom gflownet.tasks.contradiction.judges import FactJudge\n")
    assert "gflownet.tasks.contradiction.judges" in imported_modules(bad)


def test_each_task_has_its_own_package_and_config():
    """Discovered, not listed: every task package has a config of its name, and every task config
    builds a task of a package under gflownet/tasks/ or the core's two-function adapter."""
    import yaml

    tasks = {p.name for p in (ROOT / "gflownet" / "tasks").iterdir() if (p / "task.py").is_file()}
    configs = {p.stem: yaml.safe_load(p.read_text())["task"]["_target_"] for p in (ROOT / "configs" / "task").glob("*.yaml")}
    assert tasks and tasks <= set(configs)
    for name, target in configs.items():
        if name in tasks:
            assert target.startswith(f"gflownet.tasks.{name}.task."), (name, target)
        else:  # a task from two functions (gflownet/core/function_task.py, examples/)
            assert target == "gflownet.core.function_task.FunctionTask", (name, target)


def test_shared_rewards_and_reward_models_import_no_task():
    """The shared rewards (likelihood, weighted sum, by-state, learned) and the reward-model package serve
    every task: none of them may import one."""
    offenders = {}
    for folder in ("rewards", "reward_models"):
        for path in sorted((ROOT / "gflownet" / folder).rglob("*.py")):
            bad = {m for m in imported_modules(path) if m.startswith("gflownet.tasks")}
            if bad:
                offenders[f"{folder}/{path.name}"] = sorted(bad)
    assert not offenders, offenders
    assert (ROOT / "gflownet" / "reward_models" / "model.py").is_file()

"""The package maps one namespace over the fixed folders; bare folder names must not import."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed():
    cfg = _pyproject()["tool"]["setuptools"]
    mapped = {str(Path(p)) for p in cfg["package-dir"].values()}
    folders = {
        str(p.parent.relative_to(ROOT))
        for p in ROOT.glob("**/__init__.py")
        if not any(part.startswith(".") or part in {"tests", "build"}
                   for part in p.relative_to(ROOT).parts)
    }
    # data-only packages (train/recipes: TOML files, no code) are listed without an __init__.py
    data_only = {m for m in mapped - folders if not list((ROOT / m).glob("*.py"))}
    assert folders == mapped - data_only, f"package-dir and folders differ: {folders ^ mapped}"
    assert set(cfg["packages"]) == set(cfg["package-dir"])


@pytest.mark.parametrize("name", ["shards", "pipeline", "kernels", "train", "bench"])
def test_bare_folder_names_do_not_import(name):
    # A fresh interpreter started outside the repo: only the ltpipe.* names exist.
    code = f"import importlib.util,sys; sys.exit(importlib.util.find_spec({name!r}) is not None)"
    assert subprocess.run([sys.executable, "-c", code], cwd="/").returncode == 0


@pytest.mark.parametrize("name", ["shards", "pipeline", "kernels", "train", "bench"])
def test_namespace_imports(name):
    assert importlib.import_module(f"ltpipe.{name}").__file__.startswith(str(ROOT / name))


def test_help_is_instant_and_lazy():
    code = ("import sys; from click.testing import CliRunner; from ltpipe.train.cli import main;"
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output;"
            "heavy = {'torch', 'nvidia.dali', 'numba'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["shards", "pipeline", "kernels", "train", "train.mixers",
                                  "train.losses"])
def test_public_names_resolve(name):
    """What a user's own loop imports (README, "Use ltpipe in your own training loop")."""
    module = importlib.import_module(f"ltpipe.{name}")
    assert module.__all__
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing, missing


def test_version_is_the_installed_distribution():
    from importlib.metadata import version

    from ltpipe.pipeline import __version__

    assert __version__ == version("ltpipe") == _pyproject()["project"]["version"]

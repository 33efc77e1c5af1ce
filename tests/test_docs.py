"""The documentation's promises: every public function and class has a docstring, and every
``>>>`` example in the pages and the docstrings they include runs (Sphinx's doctest builder)."""

import importlib
import inspect
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import aevb

ROOT = Path(__file__).resolve().parents[1]


def _public_objects():
    for info in pkgutil.walk_packages(aevb.__path__, "aevb."):
        module = importlib.import_module(info.name)
        yield info.name, module
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield f"{info.name}.{name}", obj
                if inspect.isclass(obj):
                    for mname, member in vars(obj).items():
                        if (
                            mname.startswith("_")
                            or not inspect.isfunction(member)
                            or member.__name__ == "<lambda>"  # a dataclass field's default
                        ):
                            continue
                        yield f"{info.name}.{name}.{mname}", member


def test_every_public_function_and_class_has_a_docstring():
    missing = []
    for qualname, obj in _public_objects():
        if inspect.isclass(obj) and not (obj.__doc__ or "").strip():
            missing.append(qualname)
        elif not inspect.isclass(obj) and not inspect.getdoc(obj):
            missing.append(qualname)
    assert not missing, f"{len(missing)} public objects without a docstring: {missing}"


@pytest.mark.skipif(
    shutil.which("sphinx-build", path=str(Path(sys.executable).parent)) is None,
    reason="sphinx is a dev dependency",
)
def test_every_doc_example_runs(tmp_path):
    """``make doctest`` without the figures (missing images only warn here; ``make docs``
    makes them first and treats every warning as an error)."""
    sphinx = str(Path(sys.executable).parent / "sphinx-build")
    result = subprocess.run(
        [sphinx, "-q", "-b", "doctest", "-D", "nb_execution_mode=off", str(ROOT / "docs")]
        + [str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    summary = (tmp_path / "output.txt").read_text() if (tmp_path / "output.txt").exists() else ""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " 0 failures in tests" in summary, summary[-2000:]


def _console_commands():
    """Every ``$ ...`` line of the pages' console blocks (the README's "try it" commands)."""
    for page in sorted((ROOT / "docs").rglob("*.rst")):
        lines = iter(page.read_text().splitlines())
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("$ "):
                command = stripped[2:].split("#")[0].rstrip()
                while command.endswith("\\"):  # a continued line
                    command = command[:-1] + " " + next(lines).strip().split("#")[0]
                yield page.relative_to(ROOT), command.split()


def test_every_console_command_in_the_docs_is_valid():
    """Console blocks are not run by the doctest builder (they train for minutes); each
    ``aevb`` command must parse with the real CLI, each script and make target exist."""
    from aevb.cli import build_parser

    commands = list(_console_commands())
    assert len(commands) >= 15
    makefile = (ROOT / "Makefile").read_text()
    for page, argv in commands:
        if argv[0] == "aevb":
            build_parser().parse_args(argv[1:])  # SystemExit on an unknown flag or choice
        elif argv[0] == "python":
            assert (ROOT / argv[1]).exists(), (page, argv)
        elif argv[0] == "make":
            assert f"\n{argv[1]}:" in makefile, (page, argv)
        elif argv[0] == "ray":  # docs/cluster.rst: a cluster as a team starts it
            assert argv[1] in ("start", "stop", "status"), (page, argv)
        elif argv[0] == "mlflow":
            assert argv[1] in ("server", "ui"), (page, argv)
        else:
            assert argv[0] in ("cat", "export"), (page, argv)

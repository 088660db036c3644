"""Every notebook runs top to bottom against a small archive: the analysis fixture database
(SQLite and PG) archived with ``danescan archive``.

The kernel is the interpreter running the tests: a kernel spec for ``sys.executable`` is
installed into a temporary prefix and found through ``JUPYTER_PATH``, so the test neither
depends on nor changes any kernel installed on the machine. ``DANESCAN_ARCHIVE`` reaches the
kernel through its environment, as it would for a person running ``jupyter``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from analysis import archive

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

if TYPE_CHECKING:

    from tests.analysis_fixture import FixtureDb

pytest_plugins = ["tests.conftest_store", "tests.analysis_fixture"]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "danescan-test-venv"
EXPECTED = ("01-adoption-funnel.ipynb", "02-dane-breakage.ipynb", "03-providers-and-tlds.ipynb")


@pytest.fixture(scope="module")
def kernel_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    prefix = tmp_path_factory.mktemp("kernel")
    kernelspec.install(kernel_name=KERNEL, display_name="danescan tests", prefix=str(prefix))
    return str(prefix / "share" / "jupyter")


def test_notebooks_present_and_committed_without_outputs() -> None:
    assert tuple(sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))) == EXPECTED
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        for c in nb.cells:
            if c.cell_type == "code":
                assert c.outputs == [], path.name
                assert c.execution_count is None, path.name
        source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert "DANESCAN_ARCHIVE" in source
        assert "open_archive(" in source
        # Measures come from analysis, not cell SQL (Ibis row exploration is fine).
        assert "sqlalchemy" not in source
        assert "sa.select(" not in source


@pytest.fixture(scope="module")
def small_archive(analysis_db: FixtureDb, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("archive") / "arc"
    archive.archive(analysis_db.engine, root)
    return str(root)


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs(
    name: str,
    small_archive: str,
    kernel_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, (
        kernel_path, os.environ.get("JUPYTER_PATH")))))  # fmt: skip
    monkeypatch.setenv("DANESCAN_ARCHIVE", small_archive)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=120,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(str(o.get("text", "")) for o in outputs)
    assert f"archive: {small_archive} nights: 2025-03-01, 2025-03-02" in text  # it used ours
    assert "open an archive" not in text  # the row-level cells ran on it
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{name} drew no chart"

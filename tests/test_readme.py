"""The README's Quickstart is what CI runs: the two must not drift apart."""

import io
import json
import re
from pathlib import Path

import pytest

from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in quickstart.splitlines() if line.startswith("    ")]
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text()
    ci_command = re.search(r"TEST_COMMAND='(.+)'", ci).group(1)
    assert ci_command == commands[1]
    assert commands[0].endswith("ens demo")


def _python_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_every_api_call_in_the_readme_names_its_command():
    blocks = _python_blocks()
    assert len(blocks) == 3
    commands = [line for b in blocks for line in b.splitlines() if line.startswith("# ens ")]
    assert [c.split()[2] for c in commands] == ["train", "fuse", "compare", "members", "predict", "report"]


@pytest.mark.slow
def test_the_python_api_blocks_run_as_written_and_agree_with_the_cli(tmp_path, monkeypatch, capsys):
    """The README's Python API blocks, run in a fresh folder, give the numbers of the CLI commands beside them."""
    import pandas as pd

    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in _python_blocks():
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    capsys.readouterr()
    assert namespace["pages"] and all(Path(p).is_file() for p in namespace["pages"])

    code, out, err = run_cli(capsys, "fuse", "--dataset", "digits", "SGD1", "DGrad1", "SGD1+DGrad1", "--format", "json")
    assert code == 0, err
    cli_rows = json.loads(out)
    api_rows = namespace["table"].to_dict("records")
    for cli_row, api_row in zip(cli_rows, api_rows, strict=True):
        for key in ("expression", "members", "accuracy", "f1_macro", "auc", "nll"):
            assert cli_row[key] == api_row[key], key

    code, out, err = run_cli(capsys, "compare", "--dataset", "digits", "SGD1+DGrad1", "SGD1")
    assert code == 0, err
    assert out.strip().splitlines()[-1] == namespace["result"].verdict()

    code, out, err = run_cli(capsys, "predict", "--dataset", "digits", "SGD1+DGrad1", "new", "--device", "cpu")
    assert code == 0, err
    cli = pd.read_csv(io.StringIO(out))
    api = namespace["rows"]
    assert list(cli["path"]) == list(api["path"]) and list(cli["predicted"].astype(str)) == list(
        api["predicted"].astype(str)
    )
    classes = [c for c in api.columns if c not in ("path", "predicted", "entropy", "mutual_information", "agreement")]
    assert abs(cli[classes].to_numpy() - api[classes].to_numpy()).max() < 1e-7  # the CSV's 8 significant digits

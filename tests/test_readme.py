"""The README's Quickstart is what CI runs: the two must not drift apart."""

import re
from pathlib import Path

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

"""The README a newcomer reads runs as written, and the generated reference is not stale."""
from __future__ import annotations

import re
import shlex

import click
import pytest
from click.testing import CliRunner

from streams.cli import main
from streams.settings import CONFIGURATION_DOC, configuration_markdown
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def code_lines() -> list[str]:
    blocks = re.findall(r"```\n(.*?)```", README, flags=re.S)
    return [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]


MMSR_LINES = [line for line in code_lines() if line.startswith("mmsr ")]


def test_the_readme_is_short_and_has_exactly_the_two_set_up_commands():
    assert len(README.splitlines()) <= 300
    assert [line for line in code_lines() if line.startswith("make ")] == ["make demo", "make test"]
    assert "this round" not in README.lower()


def command_of(line: str) -> tuple[click.Command, list[str]]:
    """The click command a README line runs, and the words that named it."""
    words, command, path = shlex.split(line)[1:], main, []
    while isinstance(command, click.Group) and words and words[0] in command.commands:
        command = command.commands[words[0]]
        path.append(words.pop(0))
    return command, path


@pytest.mark.parametrize("line", MMSR_LINES)
def test_every_readme_command_exists_with_the_flags_it_shows(line):
    command, path = command_of(line)
    assert path and not isinstance(command, click.Group), f"{line!r} names no command"
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    flags = {opt for param in command.params for opt in getattr(param, "opts", [])}
    for word in shlex.split(line):
        if word.startswith("--"):
            assert word.split("=", 1)[0] in flags, f"{line!r}: {word} is not an option of mmsr {' '.join(path)}"


def test_every_link_in_the_readme_leads_to_a_file():
    for link in re.findall(r"\]\(([^)#]+)", README):
        assert (ROOT / link).exists(), link


def test_the_configuration_reference_is_generated_from_the_settings():
    assert CONFIGURATION_DOC.read_text() == configuration_markdown(), "run: python -m streams.settings"


def test_every_variable_the_readme_names_is_a_setting():
    reference = CONFIGURATION_DOC.read_text()
    for variable in set(re.findall(r"`(MMSR_[A-Z_]+)`", README)):
        assert f"`{variable}`" in reference, variable

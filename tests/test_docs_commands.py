"""The commands the README and the documentation pages present as runnable are true.

Every ``contrastseg ...`` (or ``-m contrastseg.cli ...``) line of a fenced ``bash``/``sh``/
``console`` block in README.md and docs/*.md is parsed by the real argument parser (its
subcommand and flags exist, its values are accepted), and for ``pretrain``, ``finetune``,
``views`` and ``config`` its ``--config`` plus ``--set`` overrides are loaded by the real
config loader (every key exists and every value is valid). Placeholders in angle brackets and
lines ending in ``...`` are skipped.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from contrastseg.cli import build_parser
from contrastseg.config import load_pretrain_config
from contrastseg.train.finetune_config import load_finetune_config

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
FENCE = re.compile(r"^```(bash|sh|console|shell)\s*\n(.*?)^```", re.M | re.S)


def commands(text: str) -> list[str]:
    """The ``contrastseg`` command lines of the shell blocks of ``text`` (continuations joined,
    comments and prompts removed)."""
    found = []
    for block in FENCE.finditer(text):
        joined = re.sub(r"\s*\\\n\s*", " ", block.group(2))
        for line in joined.splitlines():
            line = re.sub(r"^\s*\$\s+", "", line)
            line = re.sub(r"\s+#.*$", "", line).strip()
            if re.search(r"(^|\s)(contrastseg|-m contrastseg\.cli)\s", line + " "):
                if "<" in line or line.endswith("..."):
                    continue
                found.append(line)
    return found


def argv_of(line: str) -> list[str]:
    """The contrastseg argv of a command line (after ``contrastseg`` or ``-m contrastseg.cli``)."""
    words = shlex.split(line)
    for i, word in enumerate(words):
        if word == "contrastseg":
            return words[i + 1 :]
        if word == "contrastseg.cli" and i and words[i - 1] == "-m":
            return words[i + 1 :]
    raise AssertionError(f"no contrastseg command in {line!r}")


CASES = [
    pytest.param(page, line, id=f"{page.relative_to(ROOT)}:{line[:60]}")
    for page in PAGES
    if page.is_file()
    for line in commands(page.read_text())
]


def test_the_pages_hold_commands():
    assert len(CASES) >= 10, (
        "the command extraction found almost nothing: is the fence regex wrong?"
    )


def check_command(line: str) -> None:
    """Parse ``line`` with the real parser and load its config with its ``--set``s.

    Raises:
        AssertionError: the parser refuses the command.
        ValueError: the config loader refuses a key or a value.
    """
    argv = argv_of(line)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as err:  # argparse's exit: the usage error is on stderr
        if err.code != 0:  # --help / --version exit 0
            raise AssertionError(f"`{line}` is refused by the argument parser") from None
        return
    command = argv[0] if argv and not argv[0].startswith("-") else None
    config = getattr(args, "config", None)
    overrides = list(getattr(args, "set", None) or [])
    if command in ("pretrain", "views", "config"):
        load_pretrain_config(_bundled(config), overrides)
    elif command == "finetune":
        load_finetune_config(_bundled(config), overrides)


@pytest.mark.parametrize(("page", "line"), CASES)
def test_documented_command_parses_and_its_config_loads(page, line):
    check_command(line)


def test_a_wrong_flag_key_or_value_is_caught():
    check_command("contrastseg pretrain --set train.batch_size=4")
    with pytest.raises(AssertionError, match="refused by the argument parser"):
        check_command("contrastseg finetune --no-such-flag")
    with pytest.raises(ValueError, match="batch_sise"):
        check_command("contrastseg pretrain --set train.batch_sise=4")
    with pytest.raises(ValueError, match=r"method\.lam"):
        check_command("contrastseg pretrain --set method.lam=7")


def _bundled(config: str | None) -> str | None:
    """A documented ``configs/x.yaml`` is loaded from the repository's copy."""
    return None if config is None else str(ROOT / config) if (ROOT / config).is_file() else config


def test_the_extraction_reads_continuations_comments_and_module_calls():
    text = (
        "```bash\n"
        "contrastseg pretrain --config configs/quickstart.yaml \\\n"
        "    --set train.steps=2   # short\n"
        "torchrun --nproc_per_node=2 -m contrastseg.cli pretrain\n"
        "contrastseg finetune --pretrained <run>\n"
        "```\n"
        "```yaml\ncontrastseg: not a command\n```\n"
    )
    lines = commands(text)
    assert lines == [
        "contrastseg pretrain --config configs/quickstart.yaml --set train.steps=2",
        "torchrun --nproc_per_node=2 -m contrastseg.cli pretrain",
    ]
    assert argv_of(lines[1]) == ["pretrain"]

"""The documentation's configuration reference (docs/configuration.md) is generated from the
config dataclasses.

Regenerate it after changing a config field: ``python tests/test_docs.py``.
"""

import re
import sys
from pathlib import Path

from contrastseg.config import PretrainConfig
from contrastseg.train.finetune_config import FinetuneConfig
from contrastseg.utils.configtools import config_reference_markdown

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def generated_reference() -> str:
    return (
        "### `contrastseg pretrain`\n\n"
        + config_reference_markdown(PretrainConfig)
        + "\n### `contrastseg finetune`\n\n"
        + config_reference_markdown(FinetuneConfig)
    )


def _section(text: str) -> str:
    match = re.search(re.escape(START) + r"\n(.*?)" + re.escape(END), text, flags=re.S)
    assert match, f"{REFERENCE} lacks the {START} ... {END} markers"
    return match.group(1)


def test_readme_configuration_reference_matches_the_dataclasses():
    assert _section(REFERENCE.read_text()) == generated_reference(), (
        "docs/configuration.md is out of date: run `python tests/test_docs.py`"
    )


def test_reference_lists_every_key_with_its_default():
    text = generated_reference()
    assert "| `method.lam` | float | `0.5` |" in text
    assert "| `views.t2.rot90.p` | float | `0.8` |" in text
    assert "| `train.amp` | 'auto' \\| 'bf16' \\| 'fp16' \\| 'off' | `auto` |" in text


if __name__ == "__main__":
    text = REFERENCE.read_text()
    new = text.replace(
        START + "\n" + _section(text) + END, START + "\n" + generated_reference() + END
    )
    REFERENCE.write_text(new)
    print("docs/configuration.md updated", file=sys.stderr)

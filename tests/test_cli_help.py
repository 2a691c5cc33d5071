"""Every command's --help is plain text: docstring markup stays in the source."""

from __future__ import annotations

import argparse

from deploy.cli import build_parser


def all_parsers(parser: argparse.ArgumentParser, path=("liquid",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_parsers(sub, path + (name,))


def test_help_of_every_command_has_no_restructuredtext_markup():
    seen = 0
    for path, parser in all_parsers(build_parser()):
        text = parser.format_help()
        assert "`" not in text and "::" not in text, f"{' '.join(path)} --help shows markup:\n{text}"
        seen += 1
    assert seen > 20  # every command and group was walked

"""The ``liquid`` command line: one entry point for every operational task.

Each command lives in its own module under ``deploy/`` and adds itself to the
tree with `CommandTree.command` in a ``register(tree)`` function; this module
only assembles the tree and turns errors into one-line messages. Handlers
import their heavy dependencies (torch, bytewax) themselves, so ``--help``
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from typing import Callable

from deploy.errors import UsageError

#: Modules that register commands, in the order their commands are listed.
COMMAND_MODULES = (
    "deploy.broker",
    "deploy.topics",
    "deploy.schemas_cmd",
    "deploy.produce",
    "deploy.flowrun",
    "deploy.replay",
    "deploy.zoo_cmd",
    "deploy.worker",
    "deploy.keys_cmd",
    "deploy.sync_cmd",
    "deploy.demo",
    "deploy.evaluate_nextstep",
    "deploy.evaluate_anomaly",
    "deploy.evaluate_policy",
    "deploy.fingerprint_cmd",
    "deploy.deploy_cmd",
)


_ROLE = re.compile(r":[a-z]+:`([^`]*)`")
_LITERAL = re.compile(r"``([^`]*)``")
_REFERENCE = re.compile(r"`([^`]*)`")


def plain_text(text: str) -> str:
    """Help text without reStructuredText markup: ``x``, `x` and :role:`x` become x, a closing ``::`` a colon.

    >>> plain_text("run ``liquid broker`` (see `morph.fleet.SimulatedNode` and :func:`f`)::")
    'run liquid broker (see morph.fleet.SimulatedNode and f):'
    """
    text = _REFERENCE.sub(r"\1", _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text)))
    return re.sub(r"::$", ":", text, flags=re.M)


class PlainHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks; descriptions and option help lose their docstring markup."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(plain_text(text))

    def _expand_help(self, action) -> str:
        return plain_text(super()._expand_help(action))


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line that points to --help (argparse prints the usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class CommandTree:
    """Nested argparse sub-commands declared by path: ``tree.command("produce telemetry", ...)``."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser
        self._subs: dict[tuple[str, ...], argparse._SubParsersAction] = {}
        self._groups: dict[tuple[str, ...], argparse.ArgumentParser] = {(): parser}

    def _subparsers(self, path: tuple[str, ...]) -> argparse._SubParsersAction:
        if path not in self._subs:
            parent = self._group(path)
            self._subs[path] = parent.add_subparsers(title="commands", metavar="COMMAND", dest=f"cmd_{len(path)}")
        return self._subs[path]

    def _group(self, path: tuple[str, ...]) -> argparse.ArgumentParser:
        if path not in self._groups:
            sub = self._subparsers(path[:-1])
            group = sub.add_parser(path[-1], help=GROUP_HELP.get(" ".join(path), ""), formatter_class=PlainHelpFormatter)
            group.set_defaults(handler=_group_usage(group))
            self._groups[path] = group
        return self._groups[path]

    def command(self, path: str, help: str, handler: Callable[[argparse.Namespace], int | None],
                description: str | None = None) -> argparse.ArgumentParser:
        """Declare a command; returns its parser for the caller to add arguments to."""
        words = tuple(path.split())
        sub = self._subparsers(words[:-1])
        parser = sub.add_parser(words[-1], help=plain_text(help), description=description or help,
                                formatter_class=PlainHelpFormatter)
        parser.set_defaults(handler=handler)
        return parser


GROUP_HELP = {
    "topics": "create and list topics",
    "schemas": "Avro schemas: show them, register them in a schema registry",
    "produce": "produce simulated or replayed data to topics",
    "flow": "run the Bytewax dataflows",
    "zoo": "build and inspect the model zoo",
    "evaluate": "offline evaluation through the same code the flows use",
    "fingerprint": "inspect workflow fingerprints",
    "deploy": "run an AdaptiveWorkflow resource here, or render it for Kubernetes",
    "keys": "the keys that sign commands: generate, rotate",
    "sync": "the central store of execution records: conflicts held for an operator, resolve, edit",
}


def _group_usage(group: argparse.ArgumentParser):
    def show(_args):
        group.print_help(sys.stderr)
        return 2

    return show


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="liquid", formatter_class=PlainHelpFormatter,
        description="Liquid Workflow: self-adapting AI workflows for edge fleets, on Bytewax and Kafka.",
    )
    parser.set_defaults(handler=lambda _a: (parser.print_help(sys.stderr), 2)[1])
    tree = CommandTree(parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(tree)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UsageError as err:
        print(f"liquid: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("liquid: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""`app` and `app-f1`: start the page, as `demo_gradio.py` and `demo_gradio_f1.py` do, with the same options (every
argument after the command goes to the page's own parser: `framepack app --port 7861 --share`)."""

from __future__ import annotations

import argparse


def add_parsers(commands: argparse._SubParsersAction) -> None:
    for name, variant, title in (("app", "original", "FramePack"), ("app-f1", "f1", "FramePack-F1")):
        parser = commands.add_parser(
            name, add_help=False, help=f"start the {title} page in your browser (options: {name} --help)",
            description=f"Start the {title} page; every option of demo_gradio{'_f1' if variant == 'f1' else ''}.py.",
        )  # fmt: skip
        parser.set_defaults(handler=lambda args, variant=variant: _start(variant, args.page_options), page_options=[])


def _start(variant: str, options: list[str]) -> int:
    from ..app.start import main  # the page's libraries load only when the page starts

    main(variant, options)
    return 0

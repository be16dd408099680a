"""Download InternLM weights from modelscope or openxlab into a verified folder the apps can load.

The files are checked after the transfer (every shard of the index present and readable,
config and tokenizer intact) before the folder is marked complete. An interrupted download
resumes when the same command is run again; what already verified is not fetched twice.

examples:
  .venv/bin/python download.py --list
  .venv/bin/python download.py internlm2_5-7b-chat
  .venv/bin/python download.py internlm-chat-7b --source openxlab --output /data/internlm-chat-7b
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from internlm_demo.errors import ModelFolderError
from internlm_demo.models import hub, registry


def build_parser() -> argparse.ArgumentParser:
    """The command line, its help taken from the docstrings."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", help="a known model id (see --list) or its repo id on either source")
    parser.add_argument("--list", action="store_true", help=hub.model_table.__doc__)
    parser.add_argument("--source", choices=hub.SOURCES, default="modelscope",
                        help="where to download from first (default: modelscope; openxlab needs an account key)")
    parser.add_argument("--output", type=Path, metavar="DIR",
                        help=f"the model folder to create (default: {registry.models_dir()}/MODEL)")
    parser.add_argument("--revision", help="a modelscope branch, tag or commit (openxlab serves only the latest files)")
    parser.add_argument("--no-fallback", action="store_true",
                        help="do not try the other source when the chosen one is unreachable or refuses")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(hub.model_table())
        return 0
    if not args.model:
        parser.error("name a MODEL to download, or pass --list to see the known models")
    try:
        folder = hub.download_model(args.model, source=args.source, output=args.output,
                                         revision=args.revision, allow_fallback=not args.no_fallback)
        print(hub.summary(args.model, folder))
    except (hub.DownloadError, ModelFolderError) as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    except OSError as problem:  # the disk or the folder failed under us after the checks
        print(f"error: {problem}; check the disk and the folder, then run the same command again.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: the folder is not marked complete; run the same command again to resume.",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

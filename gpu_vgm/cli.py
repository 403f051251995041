"""What every command shares: logging setup and the one-line-error wrapper (csvkit style).

Each command module has ``build_parser()`` and ``main(argv=None) -> int`` so tests run it in
process; ``python -m gpu_vgm.<command>`` calls ``run_main``.
"""

import argparse
import gc
import logging
import sys

from gpu_vgm.errors import VGMError

log = logging.getLogger("gpu_vgm")


def int_at_least(minimum, maximum=None):
    """argparse type: an integer in [minimum, maximum]."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse


def add_verbosity(parser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quiet", "-q", action="store_true", help="only errors (e.g. --quiet)")
    group.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="debug logging and full tracebacks on errors (e.g. --verbose)",
    )


def setup_logging(args):
    level = logging.ERROR if getattr(args, "quiet", False) else logging.INFO  # as --help says
    if getattr(args, "verbose", False):
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("gpu_vgm: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def guarded(body, args, prog):
    """Run body(args) -> int; a VGMError or a bad OS path becomes one line and an exit code."""
    try:
        return body(args)
    except VGMError as exc:
        if getattr(args, "verbose", False):
            raise
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was written to the output", file=sys.stderr)
        return 130


def run_command(parser, body, argv=None):
    """Parse ``argv``, set up logging and run ``body(args)`` guarded: every command's main."""

    def one_line_error(message):  # argparse would print the whole usage first
        print(f"{parser.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

    parser.error = one_line_error
    args = parser.parse_args(argv)
    for name, value in vars(args).items():  # file:///x is the local path /x, for every command
        if isinstance(value, str) and value.startswith("file://"):
            setattr(args, name, value.removeprefix("file://"))
    setup_logging(args)
    return guarded(body, args, parser.prog)


def run_main(main):
    code = main()
    # Everything is written and closed by now: spare the exiting interpreter its final
    # garbage collection over every module loaded (0.1-0.4 s once scikit-learn is in).
    gc.freeze()
    sys.exit(code)

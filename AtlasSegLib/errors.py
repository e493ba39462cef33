"""Error types. The CLI maps them to exit codes: InputError → 2, a failed download → 3 (``download.DownloadError``),
Cancelled → 130, everything else → 1."""


class AtlasSegError(Exception):
    """Base class of every error AtlasSeg raises on purpose."""

    exit_code = 1


class InputError(AtlasSegError):
    """The user's input (image, checkpoint, card, option) cannot be used. The message says what was wrong
    and what to do instead."""

    exit_code = 2


class Cancelled(AtlasSegError):
    """The run was cancelled through the cancel callback. Nothing was written."""

    exit_code = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the CLI's signal handler so a terminated run unwinds and cleans up exactly like
    Ctrl-C (staging folders removed, batch summary written). Exit code 143 (128 + SIGTERM)."""

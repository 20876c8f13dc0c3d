"""One exception type for user-facing failures: its message is the one line the CLI prints."""


class FemurUNetError(Exception):
    """Bad input or unusable file; str(e) names the file/node and what is wrong."""


class Cancelled(FemurUNetError):
    """The caller's cancel hook asked to stop; nothing was written."""


class FemurUNetWarning(UserWarning):
    """The input is usable but not as expected (e.g. uneven DICOM slice spacing); one line, naming the file."""

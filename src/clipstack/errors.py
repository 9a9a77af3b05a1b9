"""The one exception type for problems a user can fix: bad input, a wrong path, a bad config value.

The CLI prints these as one line (`clipstack: error: ...`) instead of a traceback, so the message must
name the file, field or value at fault and say why.
"""


class ClipstackError(Exception):
    """A user-facing error: the message names what is wrong and where."""


class ConfigError(ClipstackError, ValueError):
    """A config field has a bad value; the message names the field."""


class DataError(ClipstackError):
    """Input data (a file, shard, column or sample) cannot be used; the message names it."""

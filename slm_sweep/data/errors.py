"""The one exception type raised for bad dataset configuration or bad dataset files."""


class DataError(ValueError):
    """A dataset spec, file or row that can't be used; the message names the bad value and what is allowed."""

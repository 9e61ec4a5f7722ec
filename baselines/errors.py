"""The one base class of every mistake a user can make, for the harness and the methods alike.

It lives at the bottom of the stack (the methods raise it too) so that every layer above can subclass it; the
CLI turns any `UserError` into one line and exit 2 without knowing the subclass. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in what the user typed, wrote in a config file, or pointed the harness at."""

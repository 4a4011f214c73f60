# Copyright (c) spanet_mm contributors. All rights reserved.
"""The one base class of the errors that are the user's to fix."""


class UserError(Exception):
    """Bad input (a config, a dataset, a checkpoint) whose message names the problem and the fix.

    The project's tools print it as one ``ERROR: <message>`` line and exit with status 1,
    without a traceback (:func:`spanet_mm.engine.launch.run_tool`): the traceback would only
    bury the message. Every such error also derives from the built-in type it refines
    (``ValueError``, ``FileNotFoundError``, ...), so callers that catch those keep working.
    """

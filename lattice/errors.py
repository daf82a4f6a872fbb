"""The project's own error types.

Every error gaugeflow raises on purpose derives from :class:`GaugeflowError`; the command
line turns exactly these (and the ``OSError`` of a path) into exit status 2 with one line on
stderr, so that anything else -- a bug -- shows its traceback.  Messages speak in the
library's parameter names (``n_configs``, ``learning_rate``); the command line translates
them to its options.
"""


class GaugeflowError(Exception):
    """Base of all errors gaugeflow raises deliberately."""


class InputError(GaugeflowError, ValueError):
    """Bad input: an unknown name, a malformed shape, a parameter out of range."""


class TrainingError(GaugeflowError, ValueError):
    """Training cannot go on (it diverged), or a checkpoint does not fit the request."""

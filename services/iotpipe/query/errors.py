"""Why a window could not be read; the API maps each to its status (503, 504, an error line)."""


class BrokerUnavailable(RuntimeError):
    """The broker did not answer within the timeout."""


class ScanTimeout(RuntimeError):
    """The window could not be read before the request deadline."""


class UnknownTopic(LookupError):
    """The sensor's topic does not exist on the broker."""

"""Error types. Each message names the problem and the fix."""


class ForgeError(Exception):
    """Base class for errors that a user can act on."""


class ConfigError(ForgeError, ValueError):
    """The configuration is invalid; raised before any work starts."""


class ModelLoadError(ForgeError):
    """A model could not be loaded (missing path, unsupported architecture, vocab mismatch)."""


class CheckpointNotFound(ForgeError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else ""


class CheckpointCorrupted(ForgeError):
    """A file's digest does not match the manifest."""


class GateFailed(ForgeError):
    """A quality gate failed: the stage's output regressed past a limit. Not transient: never retried."""


class TransientError(ForgeError):
    """A failure worth retrying (network, object store)."""


class InvalidKey(ForgeError, ValueError):
    """A checkpoint key that is not a key (a path, `..`, an empty name)."""

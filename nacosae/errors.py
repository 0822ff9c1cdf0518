"""Domain errors. The CLI turns every `NacosaeError` into one red line, a hint and exit code 1."""


class NacosaeError(Exception):
    """A problem the user can fix; `str(err)` says what was wrong and what to do."""


class UnknownModel(NacosaeError):
    """The explained-model name is not in the registry nor in torchvision."""


class UnknownLayer(NacosaeError):
    """The layer path does not name a module of the model."""


class NeuronOutOfRange(NacosaeError):
    """A unit index outside the layer's units."""


class ControlsMissing(NacosaeError):
    """No complete control activation store for a model/layer."""


class CorruptStore(NacosaeError):
    """A store file is truncated, altered or unreadable."""


class StoreConflict(NacosaeError):
    """An existing store was built from a different model, weights, layer or dataset."""


class ImagesNotFound(NacosaeError):
    """The control image folder is missing, empty or not an ImageFolder tree."""


class WeightsUnavailable(NacosaeError):
    """Weights could not be found locally nor fetched (offline, bad path, bad file)."""


class ConceptParseError(NacosaeError):
    """An LLM answer that does not follow the required format."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a command; `hint` says how to continue where it stopped."""

    def __init__(self, hint: str) -> None:
        super().__init__(hint)
        self.hint = hint

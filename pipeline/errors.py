"""One error tree. Each class carries the contract's error `code`, whether a retry can help, and the
stage it comes from (the `stage` label of `pipeline_retries_total`)."""

from __future__ import annotations


class PipelineError(Exception):
    code: str = "internal_error"
    retriable: bool = False
    stage: str = "pipeline"

    def __init__(self, message: str, *, event_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.event_id = event_id


class InvalidJson(PipelineError):
    code = "invalid_json"


class InvalidRequest(PipelineError):
    code = "invalid_request"


class UnknownModel(PipelineError):
    code = "unknown_model"


class MissingFeatures(PipelineError):
    code = "missing_features"


class DeadlineExceeded(PipelineError):
    """The caller's deadline (header `deadline`) passed before the work began: skipped, not scored."""

    code = "deadline_exceeded"


class InferenceFailed(PipelineError):
    code = "inference_failed"
    stage = "inference"


class InferenceUnavailable(InferenceFailed):
    """Triton could not be reached or was not ready: worth a retry."""

    retriable = True


class FeatureStoreUnavailable(PipelineError):
    code = "missing_features"
    retriable = True
    stage = "features"


class ResultsUnreadable(PipelineError):
    """A committed result could not be read back from the results topic (a repeat's original answer)."""

    retriable = True
    stage = "results"


class ProducerUnavailable(PipelineError):
    """The worker's transactional producer stalled and no replacement answered in time: the worker
    stops (its supervisor restarts it; nothing uncommitted is lost) rather than wait for ever."""

    stage = "produce"


class ConfigurationError(PipelineError):
    code = "configuration_error"


class NotFound(PipelineError):
    """The HTTP bridge has no route at the path asked for."""

    code = "not_found"


class MethodNotAllowed(PipelineError):
    """The HTTP bridge's route exists, but not for this method."""

    code = "method_not_allowed"


class UnsupportedMediaType(PipelineError):
    """A request body declared as something else than JSON, the only type the HTTP bridge reads."""

    code = "unsupported_media_type"

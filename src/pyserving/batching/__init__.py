"""The Batcher: a shared batch scheduler with TF Serving's knobs, deadlines and back-pressure."""

from pyserving.batching.options import (
    BatchingConfigError,
    BatchingOptions,
    BatchingPolicy,
    load_batching_parameters,
    parse_batching_text_proto,
)
from pyserving.batching.queue import QUEUE_FULL_MESSAGE, BatchRecord, BatchTask
from pyserving.batching.scheduler import BatchScheduler, SchedulerStatistics

__all__ = [
    "QUEUE_FULL_MESSAGE",
    "BatchRecord",
    "BatchScheduler",
    "BatchTask",
    "BatchingConfigError",
    "BatchingOptions",
    "BatchingPolicy",
    "SchedulerStatistics",
    "load_batching_parameters",
    "parse_batching_text_proto",
]

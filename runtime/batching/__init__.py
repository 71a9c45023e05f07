"""Dynamic batching: a bounded queue per model version from which free workers take batches."""

from marfleet.runtime.batching.queue import BatchQueue, QueueFull

__all__ = ["BatchQueue", "QueueFull"]

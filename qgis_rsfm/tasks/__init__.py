"""Long-running work as ``QgsTask`` objects: model jobs and the backend environment installer."""

from .job_task import Canceled, Failed, JobOutcome, RsfmJobTask, Success

__all__ = ["Canceled", "Failed", "JobOutcome", "RsfmJobTask", "Success"]

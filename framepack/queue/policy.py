"""Who may queue what: a job that goes on from another only by that job's owner (as its record says, never as an
uploaded file's name says), at most a few waiting or running jobs per user, and one job at a time per source."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..jobs.paths import LOCAL_USER, JobPaths, is_job_name
from ..jobs.record import job_owner
from ..jobs.spec import JobSpec
from .store import QueuedJob

# Jobs one owner may have waiting or running at once: one user cannot fill the line for everyone. The person at the
# machine itself (no logins, serving only this machine) may queue as many as they like.
MAX_JOBS_PER_OWNER = 4


def owns(output_dir: Path, job_name: str, owner: str) -> bool:
    """Whether `owner` may go on with the job `job_name` of the outputs folder (it exists and is theirs)."""
    return is_job_name(job_name) and job_owner(JobPaths(output_dir, job_name)) == owner


def no_such_job(job_name: str) -> str:
    """The answer for a job that does not exist or is someone else's: the same words, so nothing leaks."""
    return f"you have no job named {job_name!r} in this app's outputs"


def over_limit(active: Sequence[QueuedJob], owner: str, limit: int) -> str | None:
    """Why `owner` may not have one more job waiting or running, if they may not."""
    if owner != LOCAL_USER and sum(job.owner == owner for job in active) >= limit:
        return f"you already have {limit} job{'s' * (limit != 1)} waiting or running; wait for one to end or stop one"
    return None


def refusal(spec: JobSpec, owner: str, active: Sequence[QueuedJob], output_dir: Path, limit: int) -> str | None:
    """Why a job may not be queued, if it may not: its source is not the owner's, the owner is at the limit, or
    the job it goes on with is waiting or running already."""
    if spec.source is not None and not owns(output_dir, spec.source, owner):
        return no_such_job(spec.source)
    if problem := over_limit(active, owner, limit):
        return problem
    if spec.kind == "resume" and any(spec.source in (job.id, job.spec.source) for job in active):
        return f"{spec.source} is already waiting or running"
    return None

"""The generation engine: one image and a prompt to a video, section by section, as a stream of typed events.

Its entry points (`framepack.engine.jobs`) each take the job's lock, ask a start (`starts`) where the job begins and
run the one section loop (`loop`), which conditions (`conditioning`), samples (`framepack.sampling`, with a step
cache from `stepcache`), decodes and blends (`frames`) and hands the video to a sink (`sinks`). It holds no global
state and never blocks on anything but computation.
"""

from .errors import failure_message
from .jobs import add_seconds, branch_job, extend_video, generate, resume_job

__all__ = ["add_seconds", "branch_job", "extend_video", "failure_message", "generate", "resume_job"]

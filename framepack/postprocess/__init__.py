"""Post-processing: what happens to a finished video before a user keeps it (upscaling, frame interpolation,
colour matching, other formats), streamed frame by frame so memory does not grow with the video's length."""


class PostprocessError(ValueError):
    """A post-processing request cannot be carried out; the message names the problem in one line."""

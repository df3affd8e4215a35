"""The generation engine: one image and a prompt to a video, section by section, as a stream of typed events."""

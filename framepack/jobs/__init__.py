"""A job's files in the outputs folder: where they go and the lock held while a job is worked on (`paths`), its
record (`record`), its checkpoint and latents (`checkpoint`), and what it runs, as data (`spec`)."""

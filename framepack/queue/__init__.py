"""The job queue: the store that outlives the app (`store`), who may queue what (`policy`), the workers that run
jobs (`runners`, and `cluster` for Ray), and the front that claims jobs and streams their events (`front`)."""

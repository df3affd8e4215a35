"""The desktop app: a Gradio page over the queue. Its fields are declared once (`fields`), its actions are plain
methods (`service`), what jobs look like is `views`, where controls sit is `layout`, and `wiring` connects them;
`start` parses the command line and launches it."""

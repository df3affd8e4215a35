"""FramePack-F1 desktop app (forward sampling variant): `python demo_gradio_f1.py --help`."""

from framepack.app.start import main

if __name__ == "__main__":
    main("f1")

"""FramePack desktop app, original (inverted anti-drifting) variant: `python demo_gradio.py --help`."""

from framepack.app.start import main

if __name__ == "__main__":
    main("original")

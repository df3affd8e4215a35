"""The timeline strip before Start: the video's sections in time order, each a small card with thumbnails of the images
that anchor it (the start image or a keyframe, and the end frame after the last section), its time range and prompt;
for a branch, whether the section is kept or made again. Thumbnails are small JPEGs inside the page's HTML, made once
per uploaded file."""

from __future__ import annotations

import base64
import html
import io
import os
import threading
from collections import OrderedDict
from typing import Any

from PIL import Image

from ..media.images import ImageError, load_image

THUMBNAIL_HEIGHT = 48
# Uploads are files of their own (a new upload is a new path), so a few recent thumbnails cover a page's edits.
THUMBNAILS_KEPT = 32
BLANK_COLOURS = {"grey": "#808080", "black": "#000000", "white": "#ffffff", "noise": "repeating-linear-gradient(45deg, #777 0 3px, #bbb 3px 6px)"}  # fmt: skip
CARD = "display: flex; flex-direction: column; gap: 4px; min-width: 120px; max-width: 180px; padding: 6px; border-radius: 6px; border: 1px solid {border}; background: {background};"  # fmt: skip
KEPT_LOOK = {True: ("#16a34a", "rgba(22, 163, 74, 0.08)"), False: ("#f97316", "rgba(249, 115, 22, 0.08)"), None: ("#9ca3af", "transparent")}  # fmt: skip


class Thumbnails:
    """Small JPEG data URIs of image files, the last `kept` of them remembered by path, modification time and size
    (the timeline is drawn again on every edit of the page). Safe to share between Gradio's handler threads."""

    def __init__(self, height: int = THUMBNAIL_HEIGHT, kept: int = THUMBNAILS_KEPT):
        self.height, self.kept = height, kept
        self._made: OrderedDict[tuple[str, int, int], str | None] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, path: str | None) -> str | None:
        """The thumbnail of the image at `path`; None without one, or for a file that is not a readable image."""
        if not path:
            return None
        try:
            stat = os.stat(path)
        except OSError:
            return None
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._made:
                self._made.move_to_end(key)
                return self._made[key]
        uri = self._make(path)
        with self._lock:
            self._made[key] = uri
            while len(self._made) > self.kept:
                self._made.popitem(last=False)
        return uri

    def _make(self, path: str) -> str | None:
        try:
            image = Image.fromarray(load_image(path))
        except (ImageError, OSError, ValueError):
            return None  # the timeline's text and Start say what is wrong with it
        image.thumbnail((self.height * 4, self.height))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def strip_html(rows: list[dict[str, Any]], anchors: dict[str, str | None], blank: str | None, kept: int | None = None) -> str:
    """The strip of `rows` (`describe_schedule`'s, in time order). `anchors` maps "start image", "keyframe k" and
    "end frame" to thumbnails; `blank` names the blank start's colour when there is no start image; `kept`: for a
    branch, how many sections it keeps, counted in the order they are made."""
    cards = []
    for row in rows:
        is_kept = None if kept is None else row["generated"] <= kept
        border, background = KEPT_LOOK[is_kept]
        pictures = [_picture(row["start_slot"], anchors.get(row["start_slot"]), blank if row["start_slot"] == "start image" else None)]
        if row.get("end_frame"):
            pictures.append(_picture("end frame", anchors.get("end frame"), None))
        note = "" if is_kept is None else ("kept" if is_kept else "made again")
        marked = "" if is_kept is None else f' data-kept="{str(is_kept).lower()}"'
        cards.append(
            f'<div class="fp-strip-section"{marked} '
            f'style="{CARD.format(border=border, background=background)}">'
            f'<div style="font-weight: 600; font-size: 0.85em;">{row["start"]:.2f}–{row["end"]:.2f} s'
            f'{f" · {note}" if note else ""}</div>'
            f'<div style="display: flex; gap: 4px; align-items: center;">{"".join(pictures)}</div>'
            f'<div style="font-size: 0.85em; overflow-wrap: anywhere;">{html.escape(_short(row["prompt"]))}</div></div>'
        )
    caption = _branch_caption(rows, kept) if kept is not None else ""
    return (
        f'<div id="fp-strip-inner">{caption}<div style="display: flex; gap: 6px; overflow-x: auto; padding: 4px 0;">'
        f'{"".join(cards)}</div></div>'
    )


def _picture(what: str, uri: str | None, blank: str | None) -> str:
    label = html.escape(what)
    if uri is not None:
        return f'<img src="{uri}" alt="{label}" title="{label}" style="height: {THUMBNAIL_HEIGHT}px; border-radius: 3px;">'
    if blank is not None:
        colour = BLANK_COLOURS.get(blank, BLANK_COLOURS["grey"])
        return (f'<div title="{html.escape(blank)} frame" style="height: {THUMBNAIL_HEIGHT}px; width: {THUMBNAIL_HEIGHT}px; '
                f'border: 1px solid #9ca3af; border-radius: 3px; background: {colour};"></div>')  # fmt: skip
    return f'<div style="font-size: 0.8em; color: #6b7280;">{label}</div>'  # no picture (yet): its name


def _short(prompt: str, limit: int = 80) -> str:
    return prompt if len(prompt) <= limit else prompt[: limit - 1] + "…"


def _branch_caption(rows: list[dict[str, Any]], kept: int) -> str:
    """Which seconds a branch keeps and which it makes again, in time order."""
    kept_rows = [row for row in rows if row["generated"] <= kept]
    redone = [row for row in rows if row["generated"] > kept]
    if not redone:
        text = "A branch keeping this many sections keeps the whole video: nothing would be made again."
    else:
        span = lambda part: f"{min(r['start'] for r in part):.2f}–{max(r['end'] for r in part):.2f} s"  # noqa: E731
        made = f"makes {span(redone)} again"
        if not kept_rows:
            text = f"A branch keeping no section {made}."
        elif kept_rows[0]["start"] < redone[0]["start"]:  # said in time order
            text = f"A branch keeps {span(kept_rows)} and {made}."
        else:
            text = f"A branch {made} and keeps {span(kept_rows)}."
    return f'<div class="fp-strip-branch" style="margin-bottom: 4px;">{html.escape(text)}</div>'

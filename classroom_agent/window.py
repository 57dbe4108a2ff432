"""A local window on the classroom PC or TV: the lesson's video tracks in a labelled grid.

Tk is not thread-safe and its main loop blocks, so the window lives in its own thread.
The asyncio side only drops the latest frame per tile into a dict (:meth:`LocalWindow.show`
never blocks); the Tk thread converts and paints the tiles about 15 times a second
(yuv → rgb24 at tile size with swscale, then a binary PPM into ``tk.PhotoImage``).
Closing the window only stops the window; the agent keeps running.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import threading
from typing import Any

import av

logger = logging.getLogger(__name__)

REFRESH_MS = 66  # ~15 fps is plenty for a monitor and keeps the PC's CPU for decoding


class LocalWindow:
    """A Tk window with one tile per video track; use :func:`open_window` to create one."""

    def __init__(
        self,
        title: str = "Tongke",
        tile_size: tuple[int, int] = (480, 270),
        columns: int | None = None,
    ) -> None:
        self.title = title
        self.tile_size = tile_size
        self.columns = columns
        self._latest: dict[str, tuple[str, av.VideoFrame]] = {}
        self._notices: dict[str, str] = {}  # track -> why its picture is not shown
        self._order: list[str] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.error: str | None = None
        self._closed = threading.Event()
        # Tk may only be touched from its own thread, so other threads ask, never call.
        self._close_requested = threading.Event()
        self._thread = threading.Thread(target=self._run, name="local-window", daemon=True)
        self.painted = 0  # tiles painted so far; lets tests and diagnostics see progress

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def start(self, timeout_s: float = 5.0) -> bool:
        """Start the Tk thread; False if Tk could not open the display."""
        self._thread.start()
        self._ready.wait(timeout_s)
        return self._ready.is_set() and self.error is None

    def show(self, name: str, label: str, frame: av.VideoFrame) -> None:
        """Offer the newest frame of track ``name``; older undisplayed frames are dropped."""
        if self.closed:
            return
        with self._lock:
            if name not in self._latest:
                self._order.append(name)
            self._latest[name] = (label, frame)

    def set_notice(self, name: str, notice: str | None) -> None:
        """Show `notice` instead of the track's last picture (None: show the picture)."""
        with self._lock:
            if notice:
                self._notices[name] = notice
            else:
                self._notices.pop(name, None)

    def remove(self, name: str) -> None:
        with self._lock:
            self._notices.pop(name, None)
            self._latest.pop(name, None)
            if name in self._order:
                self._order.remove(name)

    def close(self) -> None:
        """Close the window from any thread (the Tk thread itself destroys it)."""
        self._close_requested.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._closed.set()

    # -- Tk thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._tk_main()
        finally:
            # The Tcl interpreter must be freed by the thread that created it (Tcl aborts
            # the process otherwise). The Tk objects form reference cycles through the
            # callbacks, so collect them here, now that _tk_main's frame is gone.
            gc.collect()
            self._closed.set()
            self._ready.set()

    def _tk_main(self) -> None:
        try:
            import tkinter as tk

            root = tk.Tk()
        except Exception as exc:  # no display, no Tk: the agent runs headless
            # Keep only the text: the traceback holds the half-made interpreter.
            self.error = f"{type(exc).__name__}: {exc}"
            return
        root.title(self.title)
        root.configure(background="black")
        # Closing from the title bar goes through refresh() too, so no callback is left
        # pending in Tcl when the window is destroyed.
        root.protocol("WM_DELETE_WINDOW", self._close_requested.set)
        tiles: dict[str, tuple[Any, Any, Any]] = {}
        shown: dict[str, int] = {}

        def layout() -> None:
            columns = self.columns or max(1, math.ceil(math.sqrt(len(tiles))))
            for index, name in enumerate(tiles):
                frame_widget = tiles[name][0]
                frame_widget.grid(row=index // columns, column=index % columns, padx=2, pady=2)

        def refresh() -> None:
            if self._close_requested.is_set():
                root.destroy()
                return
            with self._lock:
                pending = [(n, *self._latest[n]) for n in self._order]
                notices = dict(self._notices)
            for name in list(tiles):
                if name not in {p[0] for p in pending}:
                    tiles.pop(name)[0].destroy()
                    layout()
            for name, label, frame in pending:
                notice = notices.get(name)
                if notice and name in tiles:
                    # A picture the SFU stopped sending must never look live.
                    _, picture, caption = tiles[name]
                    picture.configure(image="")
                    caption.configure(text=f"{label}\n{notice}", foreground="#ffd479")
                    shown[name] = 0
                    continue
                if shown.get(name) == id(frame):
                    continue
                shown[name] = id(frame)
                if name not in tiles:
                    box = tk.Frame(root, background="black")
                    caption = tk.Label(box, text=label, foreground="white", background="black")
                    picture = tk.Label(box, background="black")
                    picture.pack()
                    caption.pack()
                    tiles[name] = (box, picture, caption)
                    layout()
                _, picture, caption = tiles[name]
                image = tk.PhotoImage(data=to_ppm(frame, self.tile_size), format="PPM")
                picture.configure(image=image)
                picture.image = image  # Tk keeps no reference of its own
                caption.configure(text=label, foreground="white")
                self.painted += 1
            root.after(REFRESH_MS, refresh)

        root.after(0, refresh)
        self._ready.set()
        try:
            root.mainloop()
        except Exception:
            logger.exception("local window failed")
        finally:
            tiles.clear()
            shown.clear()


def to_ppm(frame: av.VideoFrame, size: tuple[int, int]) -> bytes:
    """A binary PPM (P6) of ``frame`` fitted into ``size``, keeping the aspect ratio."""
    width, height = size
    scale = min(width / frame.width, height / frame.height)
    w = max(2, int(frame.width * scale) & ~1)
    h = max(2, int(frame.height * scale) & ~1)
    rgb = frame.reformat(width=w, height=h, format="rgb24").to_ndarray()
    return b"P6 %d %d 255\n" % (w, h) + rgb.tobytes()


def open_window(
    title: str = "Tongke", tile_size: tuple[int, int] = (480, 270), columns: int | None = None
) -> LocalWindow | None:
    """A started local window, or None when there is no display (headless box, SSH)."""
    if not os.environ.get("DISPLAY"):
        return None
    try:
        import tkinter  # noqa: F401 - some Pythons are built without Tk
    except ImportError:
        logger.info("tkinter is not available; no local window")
        return None
    window = LocalWindow(title, tile_size, columns)
    if not window.start():
        logger.info("cannot open a local window on %s: %s", os.environ.get("DISPLAY"), window.error)
        return None
    return window

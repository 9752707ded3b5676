#!/usr/bin/python3
"""A tiny RTSP server for the tests (gst-rtsp-server through python3-gi).

Usage: rtsp_server.py PORT [MOUNT]

Serves a live H.264 test pattern at rtsp://127.0.0.1:PORT/MOUNT (default
/cam), shared between clients, until killed. Prints "ready" once listening.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

LAUNCH = (
    "( videotestsrc is-live=true pattern=smpte "
    "! video/x-raw,width=160,height=120,framerate=10/1 "
    "! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 "
    "! rtph264pay name=pay0 pt=96 config-interval=1 )"
)


def main():
    port = sys.argv[1]
    mount = sys.argv[2] if len(sys.argv) > 2 else "/cam"
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(LAUNCH)
    factory.set_shared(True)
    server.get_mount_points().add_factory(mount, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr, flush=True)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()

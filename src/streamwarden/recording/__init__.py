"""Recording policy and bookkeeping that needs no GStreamer: file naming, the segment index,
retention and the disk guard. The GStreamer side lives in ``streamwarden.media.recorder``."""

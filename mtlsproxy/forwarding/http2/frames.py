"""What a peer's frames may make us hold before ``h2`` looks at them.

``h2.frame_buffer.FrameBuffer`` waits for a whole frame before checking its length against
SETTINGS_MAX_FRAME_SIZE, so a frame header announcing 16 MiB makes it buffer 16 MiB first; and
it accepts up to 64 CONTINUATION frames of a header block (1 MiB at the default frame size)
before the block is decoded and its size checked. ``BoundedFrameBuffer`` refuses both early:
a frame longer than allowed as soon as its 9-byte header is there (RFC 9113 section 4.2: a
FRAME_SIZE_ERROR), and a header block whose fragments add up to more than ``max_block`` bytes
while it is still open (RFC 9113 section 6.10; the CONTINUATION flood of CVE-2024-27316).
"""

from __future__ import annotations

from h2.exceptions import DenialOfServiceError, FrameTooLargeError
from h2.frame_buffer import FrameBuffer
from hyperframe.frame import Frame

FRAME_HEADER = 9


class HeaderBlockTooLarge(DenialOfServiceError):
    """A header block's fragments (HEADERS + CONTINUATION) passed the bound before it ended."""


class BoundedFrameBuffer(FrameBuffer):
    """``FrameBuffer`` with a frame length checked at its header and a bounded header block.

    ``max_block``: bytes of encoded header block accepted across HEADERS and CONTINUATION
    frames; a block is decoded into at most ``max_header_list_size`` octets, and HPACK encodes
    a field list in at most about as many bytes as it decodes to (RFC 7541 section 4.1 counts
    32 octets a field on top of name and value), so twice that bound refuses no honest block.
    """

    def __init__(self, max_block: int, server: bool = False) -> None:
        super().__init__(server=server)
        self.max_block = max_block

    def __next__(self) -> Frame:
        if len(self._data) >= FRAME_HEADER:
            length = int.from_bytes(self._data[:3], "big")
            if length > self.max_frame_size:
                msg = f"frame of {length} bytes announced, max {self.max_frame_size}"
                raise FrameTooLargeError(msg)
        return super().__next__()

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        out = super()._update_header_buffer(f)
        if not self._headers_buffer:  # no block open: the usual case, nothing to add up
            return out
        pending = sum(len(fragment.data) for fragment in self._headers_buffer)
        if pending > self.max_block:
            msg = f"header block over {self.max_block} bytes without END_HEADERS"
            raise HeaderBlockTooLarge(msg)
        return out

"""Images as bytes and pixels: decoding, the spec's image objects, the guarded URL fetcher, stored uploads."""

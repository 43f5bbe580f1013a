"""The test configuration every module agrees on: the model under test and the limits the test app runs with."""

from __future__ import annotations

# The smallest PE-Core variant: the real architecture, with random weights.
TEST_MODEL = "PE-Core-T16-384"
TEST_DIM = 512
TEST_MAX_BATCH = 16
TEST_MAX_BODY = 4 * 1024 * 1024
TEST_MAX_IMAGE_BYTES = 2 * 1024 * 1024
TEST_MAX_PIXELS = 4_000_000
TEST_MAX_TEXT = 2_000

# The keys of the `keyed_client` app (conftest): one write key, two read-only keys.
WRITE_KEY = "write-key"
READ_KEY = "read-key"
OTHER_READ_KEY = "other-read"

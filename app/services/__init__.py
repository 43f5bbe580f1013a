"""What the API and the CLI do, without HTTP: embedding, search, images, thumbnails, re-embedding."""

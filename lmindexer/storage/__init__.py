"""Object storage (local files and S3)."""

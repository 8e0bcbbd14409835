"""OCI images: layers from packages, base-image pull, the image writer, push."""

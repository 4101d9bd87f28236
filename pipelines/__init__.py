"""Data: find and validate images, the manifest and its split, augmentation spec, loaders."""

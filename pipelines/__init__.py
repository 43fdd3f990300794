"""absl-flag scripts: thin wrappers that read flags, call tflq, print and set the exit code."""

"""The collection: sources (Cinema databases, image folders, synthetic scenes), the renders.zarr
store, the training dataset."""

"""Data: video I/O, the toy video world, native-format loaders, datasets."""
